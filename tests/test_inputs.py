"""The report's inputs (moe_profiler/analysis/inputs.py, reading/dumps.py, coverage.py):
each file told by its content, what it provides, bad and mismatched inputs refused by name,
and what a report of each says it left out."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import (
    distinct_ids,
    vllm_response,
    write_counts_log,
    write_dump,
    write_jsonl,
    write_log,
)

from moe_profiler.analysis import inputs, pipeline
from moe_profiler.analysis.description import Need, Options
from moe_profiler.reading import dumps
from moe_profiler.reading.routes import RouteLogError


@pytest.fixture
def files(tmp_path):
    """One of each kind, all of one model (3 decoder layers, 6 experts, top-2), named so
    that no name tells the kind."""
    rng = np.random.default_rng(0)
    routes = write_log(
        tmp_path / "a.txt", [distinct_ids(rng, 3, 2, 2, 6)], layers=(0, 2), num_experts=6,
        num_layers=3,
    )  # fmt: skip
    counts = write_counts_log(
        tmp_path / "b.json", [np.full((2, 6), 2), np.array([[6, 0, 0, 0, 0, 6]] * 2)],
        layers=(0, 2), num_layers=3,
    )  # fmt: skip
    dump = np.zeros((3, 6), dtype=np.int64)
    dump[[0, 2]] = [1, 2, 3, 0, 0, 0]
    dumped = write_dump(tmp_path / "c.jsonl", dump, [0, 2], since=100.0, until=160.0)
    ids = np.zeros((4, 3, 2), dtype=np.int64)
    ids[:, [0, 2]] = distinct_ids(rng, 4, 2, 2, 6)
    capture = write_jsonl(tmp_path / "d.dat", [vllm_response([1, 2, 3], [4, 5], ids)])
    return {"routes": routes, "counts": counts, "dump": dumped, "capture": capture}


def test_each_file_is_told_by_its_content_and_says_what_it_provides(files):
    opened = inputs.open_inputs([str(p) for p in files.values()])
    assert [(one.kind, one.files[0].name) for one in opened] == [
        ("routes log", "a.txt"),
        ("counts log", "b.json"),
        ("dump", "c.jsonl"),
        ("vLLM routed_experts", "d.dat"),
    ]
    assert opened[0].provides == frozenset(Need) - {Need.TIMES}
    assert (
        opened[1].provides
        == opened[2].provides
        == {
            Need.EXPERT_COUNTS,
            Need.WEIGHT_SUMS,
            Need.TIMES,
        }
    )
    assert opened[3].provides == {
        Need.EXPERT_COUNTS,
        Need.TOKEN_ROUTES,
        Need.REQUESTS,
        Need.PHASES,
        Need.TOKEN_IDS,
    }
    assert {(one.num_experts, one.top_k, one.num_layers) for one in opened} == {(6, 2, 3)}
    assert all(one.layers == [0, 2] for one in opened)


def test_inputs_of_different_models_are_refused_naming_both_files(files, tmp_path):
    other = write_counts_log(tmp_path / "o.jsonl", [np.ones((2, 8))], layers=(0, 2), num_layers=3)
    with pytest.raises(RouteLogError) as refused:
        inputs.open_inputs([str(files["routes"]), str(other)])
    assert str(refused.value) == (
        f"cannot analyse {files['routes'].resolve()} (routes log) and {other.resolve()} "
        "(counts log) together: they are of different models (num_experts 6 != 8)"
    )
    deeper = write_dump(tmp_path / "e.json", np.ones((5, 6), dtype=np.int64), [0], 1.0, 2.0)
    with pytest.raises(RouteLogError, match=r"c\.jsonl \(dump\) and .*e\.json \(dump\) together: "
                       r"they are of different models \(num_layers 3 != 5\)"):  # fmt: skip
        inputs.open_inputs([str(files["dump"]), str(deeper)])
    top3 = write_jsonl(
        tmp_path / "f.jsonl",
        [vllm_response([1], [2, 3], np.array([[[0, 1, 2]] * 3] * 2))],
    )
    with pytest.raises(RouteLogError, match=r"a\.txt \(routes log\) and .*f\.jsonl \(vLLM "
                       r"routed_experts\) together: .* \(top_k 2 != 3\)"):  # fmt: skip
        inputs.open_inputs([str(files["routes"]), str(top3)])


def test_a_truncated_dump_is_refused_naming_the_file(files, tmp_path):
    text = files["dump"].read_text()
    for cut in (len(text) // 2, 40):  # inside logical_count, inside the status fields
        broken = tmp_path / f"cut{cut}.json"
        broken.write_text(text[:cut])
        with pytest.raises(RouteLogError) as refused:
            inputs.open_inputs([str(broken)])
        assert str(refused.value).startswith(
            f"{broken.resolve()}: not a whole dump of /dump_expert_distribution_record: its "
            "JSON is broken or cut short"
        )


def test_a_file_of_another_kind_is_refused_saying_what_is_read(tmp_path):
    other = tmp_path / "x.jsonl"
    other.write_text('{"hello": 1}\n')
    with pytest.raises(RouteLogError, match=r"x\.jsonl: its first line is none of these: the "):
        inputs.open_inputs([str(other)])
    other.write_text("hello\n")
    with pytest.raises(RouteLogError, match=r"x\.jsonl:1: not JSON: the report reads route"):
        inputs.open_inputs([str(other)])


def test_a_series_of_dumps_since_one_start_is_read_as_the_windows_between_them(tmp_path):
    counts = np.array([[4, 0, 2, 0], [0, 2, 2, 2]])
    later = counts + np.array([[0, 4, 0, 2], [2, 2, 2, 0]])
    paths = [
        write_dump(tmp_path / "d2.json", later, [0, 1], since=50.0, until=70.0),
        write_dump(tmp_path / "d1.json", counts, [0, 1], since=50.0, until=60.0),
        write_dump(tmp_path / "other.json", counts, [0, 1], 50.0, 65.0, hostname="gpu-2"),
    ]
    windows = dumps.dump_windows([dumps.read_dump(p) for p in paths])
    assert [(w.source, w.t_start, w.t_end) for w in windows] == [
        (1, 50.0, 60.0),
        (2, 50.0, 65.0),
        (0, 60.0, 70.0),
    ]
    assert windows[2].counts.tolist() == [[0, 4, 0, 2], [2, 2, 2, 0]]
    assert (windows[2].tokens, windows[2].prefill_tokens) == (6 - 3, 3 - 1)
    restarted = write_dump(tmp_path / "d3.json", counts, [0, 1], since=65.0, until=80.0)
    with pytest.raises(RouteLogError, match=r"d2\.json and .*d3\.json count the same processes"):
        dumps.dump_windows([dumps.read_dump(p) for p in (*paths, restarted)])


def test_a_dump_of_the_server_whose_log_is_given_is_refused(files, tmp_path):
    counts = np.zeros((3, 6), dtype=np.int64)
    counts[0] = 1
    dump = write_dump(tmp_path / "g.json", counts, [0], 1.0, 2.0, files=["/srv/moe/b.json"])
    with pytest.raises(RouteLogError) as refused:
        inputs.open_inputs([str(files["counts"]), str(dump)])
    assert str(refused.value) == (
        f"{dump.resolve()} is a dump of the server that wrote {files['counts'].resolve()}: "
        "its counts are in that log too; give one or the other"
    )


def test_a_report_of_counts_and_a_dump_leaves_out_what_needs_tokens(files, tmp_path):
    analysis = pipeline.write_report(
        [str(files["counts"]), str(files["dump"])], tmp_path, Options(eplb=False)
    )
    counts, dump = files["counts"].resolve(), files["dump"].resolve()
    sections = analysis["meta"]["sections"]
    assert sections["load"] == {"inputs": [str(counts), str(dump)]}
    assert sections["coactivation"] == {
        "left_out": "Left out: it needs each token's top-k experts at every logged layer, "
        f"which {counts} (counts log) and {dump} (dump) do not record."
    }
    assert set(analysis) == {"meta", "load", "prefill_decode", "time_series", "ep", "ep_info"}
    assert analysis["load"]["0"]["counts"] == [2 + 6 + 1, 2 + 2, 2 + 3, 2, 2, 2 + 6]
    assert analysis["prefill_decode"]["0"]["unknown"]["tokens"] == 6 + 6 + 3
    assert analysis["ep_info"]["passes"] == 0 and analysis["ep_info"]["windows"] == 3
    assert analysis["ep"]["2"]["contiguous"]["balancedness"] is None
    windows = analysis["time_series"]["windows"]
    assert windows["source"] == [1, 0, 0] and windows["t_end"][0] == 160.0
    logical = json.loads((tmp_path / "sglang_logical_count.json").read_text())["logical_count"]
    assert logical[1] == [0] * 6 and logical[2] == analysis["load"]["2"]["counts"]


def test_routes_with_vllms_ids_leave_out_only_what_needs_weights(files, tmp_path):
    analysis = pipeline.write_report(
        [str(files["routes"]), str(files["capture"])], tmp_path, Options(eplb=False, min_count=1)
    )
    routes, capture = files["routes"].resolve(), files["capture"].resolve()
    sections = analysis["meta"]["sections"]
    assert sections["coactivation"] == {"inputs": [str(routes), str(capture)]}
    assert sections["paths"]["notes"] == [
        "Left out: the top-1 transitions and their mutual information (it needs the router "
        f"weights of each token's experts, which {capture} (vLLM routed_experts) does not "
        "record)."
    ]
    assert sections["ep"]["notes"] == [
        f"From {routes} (routes log) only: {capture} (vLLM routed_experts) does not record "
        "which tokens were routed in the same forward pass or when the tokens were routed "
        "(time windows)."
    ]
    assert sections["text_view"]["notes"][0].startswith(f"From {routes} (routes log) only")
    assert "top" not in analysis["transitions"]["0->2"]
    assert analysis["transitions"]["0->2"]["tokens"] == 3 + 4
    assert analysis["coactivation"]["0"]["tokens"] == 3 + 4
    assert "same_top1" not in analysis["locality"]["0"]
    page = (tmp_path / "report.html").read_text()
    assert "Left out: the top-1 transitions" in page
