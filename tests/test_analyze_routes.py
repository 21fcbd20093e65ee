"""analyze_routes.py end to end on written logs: outputs, their agreement, bad options."""

import html
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import distinct_ids, write_log

from moe_profiler.analysis import pipeline
from moe_profiler.analysis.description import Options
from moe_profiler.running.local_models import build_tokenizer

REPO = Path(__file__).resolve().parent.parent
LAYERS = (0, 1, 3)


def analyze(*args):
    return subprocess.run(
        [sys.executable, str(REPO / "analyze_routes.py"), *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory, questions):
    """Run A (3 passes: a prompt of 6 tokens, then 2 decode steps), run B, a tokenizer."""
    tmp = tmp_path_factory.mktemp("analyze")
    rng = np.random.default_rng(11)
    steps = [distinct_ids(rng, n, len(LAYERS), 2, 8) for n in (6, 1, 1)]
    requests = [("7-0000abcd", 0), ("7-0000abcd", 6), ("7-0000abcd", 7)]
    log = write_log(
        tmp / "a.jsonl",
        steps,
        layers=LAYERS,
        num_experts=8,
        requests=requests,
        prompt_len=6,
        first_tok=40,
        num_layers=5,
    )
    other = write_log(
        tmp / "b.jsonl", [distinct_ids(rng, 5, len(LAYERS), 2, 8)], layers=LAYERS, num_experts=8
    )
    tokenizer = tmp / "tokenizer"
    build_tokenizer(questions[:200], 300).save_pretrained(tokenizer)
    return {"tmp": tmp, "log": log, "other": other, "ids": np.concatenate(steps), "tok": tokenizer}


def test_outputs_agree_with_the_planted_routes(run):
    out = run["tmp"] / "out"
    done = analyze(run["log"], "--out", out, "--min-count", 1, "--compare", run["other"])
    assert done.returncode == 0, done.stderr
    assert "8 tokens" not in done.stdout and "24 route lines, 3 layer(s), 3 passes" in done.stdout
    analysis = json.loads((out / "analysis.json").read_text())
    ids = run["ids"]  # [8 tokens, 3 layers, top-2]; tokens 0-5 prefill, 6-7 decode
    for col, layer in enumerate(LAYERS):
        counts = np.bincount(ids[:, col].ravel(), minlength=8)
        assert analysis["load"][str(layer)]["counts"] == counts.tolist()
        phases = analysis["prefill_decode"][str(layer)]
        assert (
            phases["prefill"]["counts"] == np.bincount(ids[:6, col].ravel(), minlength=8).tolist()
        )
        assert phases["decode"]["counts"] == np.bincount(ids[6:, col].ravel(), minlength=8).tolist()
    logical = json.loads((out / "sglang_logical_count.json").read_text())["logical_count"]
    assert len(logical) == 5 and logical[2] == logical[4] == [0] * 8
    assert logical[3] == analysis["load"]["3"]["counts"]
    for size in ("2", "4", "8"):
        assert set(analysis["ep"][size]) == {"contiguous", "eplb", "eplb_redundant"}
        assert analysis["ep"][size]["eplb"]["redundant"] == 0
        assert analysis["ep"][size]["eplb_redundant"]["redundant"] == int(size)
    first_pairs = analysis["coactivation"]["0"]["top_pairs"]
    a, b = first_pairs[0]["experts"]
    both = sum(1 for t in range(8) if {a, b} <= set(ids[t, 0]))
    assert first_pairs[0]["count"] == both
    assert list(analysis["transitions"]) == ["0->1", "1->3"]
    assert analysis["transitions"]["0->1"]["tokens"] == 8
    # decode tokens at positions 6 and 7: one pair per layer; top-1 = first listed id
    for col, layer in enumerate(LAYERS):
        got = analysis["locality"][str(layer)]
        assert got["pairs"] == 1
        assert got["same_top1"] == float(ids[6, col, 0] == ids[7, col, 0])
    assert analysis["text_view"] == {"request": "7-0000abcd", "source": 0, "tokens": 8, "layer": 0}
    assert set(analysis["compare"]["layers"]) == {"0", "1", "3"}
    assert all(token["token"] >= 40 for e in analysis["token_experts"]["0"].values() for token in e)
    page = (out / "report.html").read_text()
    for section in ("load", "ep", "coactivation", "paths", "locality", "tokens", "compare"):
        assert f'<h2 id="{section}">' in page
    assert page.count('src="data:image/png;base64,') == 6 and "http" not in page


def test_tokenizer_request_and_layer(run):
    out = run["tmp"] / "tok"
    done = analyze(
        run["log"],
        "--out",
        out,
        "--tokenizer",
        run["tok"],
        "--request",
        7,
        "--layer",
        3,
        "--min-count",
        1,
    )
    assert done.returncode == 0, done.stderr
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["meta"]["tokenizer"] == str(run["tok"])
    assert analysis["text_view"]["layer"] == 3
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run["tok"])
    page = (out / "report.html").read_text()
    data = json.loads(page.split('id="tv-data">')[1].split("</script>")[0])
    assert data["texts"] == [tokenizer.decode([40 + p]) for p in range(8)]
    assert data["top1"]["3"] == run["ids"][:, 2, 0].tolist()
    assert '<option value="3" selected>' in page
    entries = [t for e in analysis["token_experts"]["3"].values() for t in e]
    assert entries and all(t["text"] == tokenizer.decode([t["token"]]) for t in entries)


def test_bad_options_name_the_option(run, tmp_path):
    log = run["log"]
    done = analyze(log, "--out", tmp_path / "x", "--layer", 2)
    assert done.returncode == 1
    assert "analyze_routes.py: --layer 2: not a logged layer (logged: [0, 1, 3])" in done.stderr
    done = analyze(log, "--out", tmp_path / "x", "--tokenizer", tmp_path / "none")
    assert done.returncode == 1 and f"--tokenizer {tmp_path / 'none'}: cannot load" in done.stderr
    four = write_log(
        tmp_path / "four.jsonl",
        [distinct_ids(np.random.default_rng(1), 2, 1, 2, 4)],
        layers=(0,),
        num_experts=4,
    )
    done = analyze(log, "--out", tmp_path / "x", "--compare", four)
    assert done.returncode == 1
    assert f"--compare {four.resolve()}: 4 experts, the logs analysed have 8" in done.stderr
    done = analyze(tmp_path / "missing.jsonl", "--out", tmp_path / "x")
    assert done.returncode == 1 and "missing.jsonl: no such file" in done.stderr
    done = analyze(log, "--out", tmp_path / "x", "--min-count", 0)
    assert done.returncode == 2 and "--min-count 0: too small" in done.stderr


def test_unknown_request_still_writes_the_report(run, tmp_path):
    done = analyze(run["log"], "--out", tmp_path, "--request", "99")
    assert done.returncode == 1 and "--request 99: not in the logs" in done.stderr
    page = (tmp_path / "report.html").read_text()
    assert "request 99 is not in the logs (its first requests: 7-0000abcd)" in page
    assert json.loads((tmp_path / "analysis.json").read_text())["text_view"]["found"] is False


def test_a_schema1_log_gets_a_report_without_what_it_does_not_record(tmp_path):
    log = REPO / "tests/data/schema1.jsonl"
    done = analyze(log, "--out", tmp_path, "--no-eplb")
    assert done.returncode == 0, done.stderr
    analysis = json.loads((tmp_path / "analysis.json").read_text())
    assert list(analysis["prefill_decode"]["0"]) == ["prefill", "decode", "unknown"]
    assert analysis["prefill_decode"]["0"]["unknown"]["tokens"] == 3
    assert {"load", "ep", "coactivation", "transitions"} <= set(analysis)
    assert not {"locality", "token_experts", "text_view", "time_series"} & set(analysis)
    why = analysis["meta"]["sections"]["text_view"]["left_out"]
    assert why == (
        "Left out: it needs each token's request and position, which "
        f"{log} (routes log, schema 1) does not record."
    )
    page = (tmp_path / "report.html").read_text()
    assert '<h2 id="text_view">' in page and html.escape(why) in page
    assert f"text_view: {why}" in done.stdout


def test_without_vllm_the_report_says_eplb_was_skipped(run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm.distributed.eplb.policy.default", None)
    analysis = pipeline.write_report([str(run["log"])], tmp_path, Options())
    assert analysis["ep_info"]["eplb_available"] is False
    assert set(analysis["ep"]["2"]) == {"contiguous"}
    assert "EPLB skipped:</strong> vLLM is not installed" in (tmp_path / "report.html").read_text()
    done = analyze(run["log"], "--out", tmp_path / "off", "--no-eplb")
    assert done.returncode == 0 and "note: turned off with --no-eplb" in done.stdout
    assert set(json.loads((tmp_path / "off" / "analysis.json").read_text())["ep"]["8"]) == {
        "contiguous"
    }
