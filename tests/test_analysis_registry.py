"""The registry of analyses (moe_profiler/analysis/registry.py): what each one declares holds."""

import html

import numpy as np
import pytest
from helpers import distinct_ids, write_log

from moe_profiler.analysis import coverage, inputs, pipeline
from moe_profiler.analysis.description import Options
from moe_profiler.analysis.inputs import open_inputs
from moe_profiler.analysis.registry import ANALYSES, sections_help


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A report's run over a 2-request log, with a second log to compare it with."""
    tmp = tmp_path_factory.mktemp("registry")
    rng = np.random.default_rng(3)
    steps = [distinct_ids(rng, n, 2, 2, 8) for n in (5, 1, 1)]
    requests = [("1-0000abcd", 0), ("1-0000abcd", 5), ("1-0000abcd", 6)]
    log = write_log(tmp / "a.jsonl", steps, requests=requests, prompt_len=5)
    other = write_log(tmp / "b.jsonl", [distinct_ids(rng, 4, 2, 2, 8)])
    options = Options(compare=[str(other)], eplb=False, min_count=1)
    return pipeline.describe_run(open_inputs([str(log)]), options)


def test_each_analysis_writes_exactly_the_sections_it_declares(run):
    finished, left_out = pipeline.run_analyses(run)
    assert [a.key for a, _ in finished] == [a.key for a in ANALYSES if a.key != "time_series"]
    for analysis, done in finished:
        assert tuple(done.results) == analysis.keys, analysis.key
        assert done.notes == ()
    log = run.inputs[0].files[0]
    assert left_out == {
        "time_series": "Left out: it needs when the tokens were routed (time windows), which "
        f"{log} (routes log) does not record."
    }


def test_every_analysis_a_counts_log_can_feed_takes_its_windows(run):
    counts = [a for a in ANALYSES if not coverage.missing(a, _counts_input(run))]
    assert [a.key for a in counts] == ["load", "time_series", "ep", "compare"]
    for analysis in counts:
        assert callable(getattr(analysis.start(run), "add_window", None)), analysis.key


def _counts_input(run):
    """The run's input as if it were a counts log (what it provides is what matters)."""
    from dataclasses import replace

    return replace(run.inputs[0], kind="counts log", provides=inputs.COUNTS_PROVIDES)


def test_anchors_and_sections_are_unique_and_every_question_is_one():
    anchors = [analysis.key for analysis in ANALYSES]
    sections = [key for analysis in ANALYSES for key in analysis.keys]
    assert len(set(anchors)) == len(anchors) and len(set(sections)) == len(sections)
    assert all(a.question.endswith("?") and a.question.count("?") == 1 for a in ANALYSES)
    assert all(a.needs for a in ANALYSES)


def test_compare_starts_only_with_a_second_run(run):
    (compare,) = [a for a in ANALYSES if a.key == "compare"]
    alone = pipeline.describe_run(run.inputs, Options())
    assert compare.start(alone) is None and compare.start(run) is not None


def test_the_page_has_one_section_per_analysis_in_registry_order(run, tmp_path):
    files = [str(f) for one in run.inputs for f in one.files]
    analysis = pipeline.write_report(files, tmp_path, run.options)
    page = (tmp_path / "report.html").read_text()
    positions = [page.index(f'<h2 id="{analysis.key}">') for analysis in ANALYSES]
    assert positions == sorted(positions)
    for one in ANALYSES:
        assert f'<p class="question">{html.escape(one.question)}</p>' in page
    why = analysis["meta"]["sections"]["time_series"]["left_out"]
    assert f'<p class="note left-out">{html.escape(why)}</p>' in page
    assert analysis["meta"]["sections"]["load"] == {"inputs": files}


def test_help_lists_every_section_with_its_question():
    text = sections_help(width=1000)
    for analysis in ANALYSES:
        assert f"  {', '.join(analysis.keys)}\n      {analysis.question}" in text
