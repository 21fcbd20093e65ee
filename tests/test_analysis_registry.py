"""The registry of analyses (moe_profiler/analysis/registry.py): what each one declares holds."""

import html

import numpy as np
import pytest
from helpers import distinct_ids, write_log

from moe_profiler.analysis import pipeline
from moe_profiler.analysis.description import Options
from moe_profiler.analysis.registry import ANALYSES, sections_help
from moe_profiler.reading import routes


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A report's run over a 2-request log, with a second log to compare it with."""
    tmp = tmp_path_factory.mktemp("registry")
    rng = np.random.default_rng(3)
    steps = [distinct_ids(rng, n, 2, 2, 8) for n in (5, 1, 1)]
    requests = [("1-0000abcd", 0), ("1-0000abcd", 5), ("1-0000abcd", 6)]
    log = write_log(tmp / "a.jsonl", steps, requests=requests, prompt_len=5)
    other = write_log(tmp / "b.jsonl", [distinct_ids(rng, 4, 2, 2, 8)])
    logs = routes.open_logs([log])
    return pipeline.describe_run(logs, Options(compare=[str(other)], eplb=False, min_count=1))


def test_each_analysis_writes_exactly_the_sections_it_declares(run):
    finished = pipeline.run_analyses(run)
    assert [analysis for analysis, _ in finished] == ANALYSES
    for analysis, done in finished:
        assert tuple(done.results) == analysis.keys, analysis.key


def test_anchors_and_sections_are_unique_and_every_question_is_one():
    anchors = [analysis.key for analysis in ANALYSES]
    sections = [key for analysis in ANALYSES for key in analysis.keys]
    assert len(set(anchors)) == len(anchors) and len(set(sections)) == len(sections)
    assert all(a.question.endswith("?") and a.question.count("?") == 1 for a in ANALYSES)
    assert all(a.needs for a in ANALYSES)


def test_compare_starts_only_with_a_second_run(run):
    (compare,) = [a for a in ANALYSES if a.key == "compare"]
    alone = pipeline.describe_run(run.logs, Options())
    assert compare.start(alone) is None and compare.start(run) is not None


def test_the_page_has_one_section_per_analysis_in_registry_order(run, tmp_path):
    files = [str(log.path) for log in run.logs]
    pipeline.write_report(files, tmp_path, run.options)
    page = (tmp_path / "report.html").read_text()
    positions = [page.index(f'<h2 id="{analysis.key}">') for analysis in ANALYSES]
    assert positions == sorted(positions)
    for analysis in ANALYSES:
        assert f'<p class="question">{html.escape(analysis.question)}</p>' in page


def test_help_lists_every_section_with_its_question():
    text = sections_help(width=1000)
    for analysis in ANALYSES:
        assert f"  {', '.join(analysis.keys)}\n      {analysis.question}" in text
