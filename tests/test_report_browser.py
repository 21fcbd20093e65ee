"""The report renders in a real browser (headless Chromium): no script error, no network,
every figure decodes, the page is not blank, and the text view's layer menu recolours; the
report of a counts log written by the real writer shows its load over time."""

import numpy as np
import pytest
from helpers import distinct_ids, write_log
from PIL import Image

from moe_profiler.analysis import pipeline, text_view
from moe_profiler.analysis.description import Options
from moe_profiler.reading import routes
from moe_profiler.running.local_models import build_tokenizer
from moe_profiler.verification import report_browser
from moe_route_log import log_format, wire
from moe_route_log.writer import WriterProcess


@pytest.fixture(scope="module")
def report(tmp_path_factory, questions):
    tmp = tmp_path_factory.mktemp("browser")
    rng = np.random.default_rng(5)
    steps = [distinct_ids(rng, n, 3, 2, 8) for n in (12, 1, 1, 1, 1)]
    requests = [("3-0000abcd", 0)] + [("3-0000abcd", p) for p in range(12, 16)]
    log = write_log(
        tmp / "a.jsonl", steps, layers=(0, 1, 2), requests=requests, prompt_len=12, first_tok=60
    )
    other = write_log(tmp / "b.jsonl", [distinct_ids(rng, 9, 3, 2, 8)], layers=(0, 1, 2))
    tokenizer = tmp / "tokenizer"
    build_tokenizer(questions[:200], 300).save_pretrained(tokenizer)
    options = Options(tokenizer=str(tokenizer), compare=[str(other)], min_count=1)
    analysis = pipeline.write_report([str(log)], tmp / "out", options)
    return tmp / "out" / "report.html", analysis, steps


def first_token_colour(page):
    return page.eval_on_selector("#tv-tokens .tok", "span => span.style.background")


def switch_to_layer_2(page):
    page.select_option("#tv-layer", "2")
    return first_token_colour(page)


def rgb(hex_colour):
    return "rgb({}, {}, {})".format(*(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)))


def test_report_renders_offline_without_errors(report, tmp_path):
    page, _, steps = report
    shot = tmp_path / "report.png"
    seen = report_browser.visit(page, shot, actions=[first_token_colour, switch_to_layer_2])
    assert seen.errors == [] and seen.requests == [] and seen.broken_images == []
    colours = text_view.expert_colours(8)
    first_token = steps[0][0]  # [layers, top-k]; equal weights: the first listed is the top-1
    assert seen.results == [rgb(colours[first_token[0, 0]]), rgb(colours[first_token[2, 0]])]
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[0] > 3000 and image.shape[1] == 1200  # the whole page, every section
    not_white = (image < 245).any(axis=2).mean()
    assert not_white > 0.05 and image.std() > 20
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 500  # figures, not flat colour


def test_a_script_error_would_be_caught(report, tmp_path):
    page, _, _ = report
    broken = tmp_path / "broken.html"
    broken.write_text(
        page.read_text().replace('getElementById("tv-layer")', "getElementById(nope)")
    )
    assert any("nope" in e for e in report_browser.visit(broken).errors)
    remote = tmp_path / "remote.html"
    remote.write_text('<img alt="x" src="http://example.invalid/x.png">')
    seen = report_browser.visit(remote)
    assert seen.requests == ["http://example.invalid/x.png"] and seen.broken_images == ["x"]


@pytest.fixture(scope="module")
def counts_report(tmp_path_factory):
    """A counts log written by the real writer process: 12 windows of 10 s, expert 1 hot in
    the first six, expert 6 in the last six (the traffic changed)."""
    tmp = tmp_path_factory.mktemp("browser-counts")
    path = tmp / "counts.jsonl"
    writer = WriterProcess(str(path), buffer_bytes=1 << 20)
    header = {"layers": [0, 1, 2], "num_experts": 8, "top_k": 2, "num_layers": 3}
    writer.send(wire.json_frame(wire.HEADER, {**header, "run_id": "c", "mode": "counts"}))
    rng = np.random.default_rng(7)
    for i in range(12):
        hot = np.full(8, 1.0)
        hot[1 if i < 6 else 6] = 6.0
        counts = np.stack([rng.multinomial(400, hot / hot.sum()) for _ in range(3)])
        line = log_format.counts_line(
            t_start=1_795_924_700.0 + 10 * i,
            t_end=1_795_924_709.9 + 10 * i,
            steps=40,
            tokens=200,
            prefill_tokens=120 if i < 6 else 40,
            layers=[0, 1, 2],
            counts=counts,
            weight_sums=counts * 0.3,
        )
        writer.send(wire.json_frame(wire.LINE, line))
    writer.send(wire.json_frame(wire.CLOSE, {"steps": 480}))
    writer.close()
    routes.wait_until_complete(path, timeout=60)
    analysis = pipeline.write_report([str(path)], tmp / "out", Options(eplb=False))
    return tmp / "out" / "report.html", analysis


def figure_names(page):
    return page.eval_on_selector_all("img", "images => images.map(i => i.alt)")


def test_a_counts_log_report_shows_its_load_over_time(counts_report, tmp_path):
    page, analysis = counts_report
    shot = tmp_path / "counts.png"
    seen = report_browser.visit(page, shot, actions=[figure_names])
    assert seen.errors == [] and seen.requests == [] and seen.broken_images == []
    assert seen.results == [["load", "time_series", "ep"]]
    series = analysis["time_series"]["layers"]["0"]
    assert [h[0] for h in series["hottest"]] == [1] * 6 + [6] * 6
    assert len(series["balancedness"]) == 12 and all(0 < b < 0.6 for b in series["balancedness"])
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[1] == 1200 and (image < 245).any(axis=2).mean() > 0.05
