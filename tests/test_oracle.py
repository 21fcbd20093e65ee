"""Comparing a log with a reference record of routes (moe_profiler/verification/oracle.py)."""

import numpy as np
from helpers import distinct_ids, write_log

from moe_profiler.reading import routes
from moe_profiler.verification import oracle


def logs_of(path):
    return [routes.LogFile(path, routes.read_header(path))]


def test_identical_missing_duplicate_unknown_and_different(tmp_path):
    rng = np.random.default_rng(0)
    a, b = distinct_ids(rng, 5, 2, 2, 8), distinct_ids(rng, 3, 2, 2, 8)
    steps = [a, b, a[1:2], distinct_ids(rng, 1, 2, 2, 8)]
    requests = [("0-aaaa", 0), ("1-bbbb", 0), ("0-aaaa", 1), ("9-cccc", 0)]
    path = write_log(tmp_path / "l.jsonl", steps, requests=requests)
    ref_b = np.concatenate([b, distinct_ids(rng, 2, 2, 2, 8)])  # 2 tokens the log lacks
    ref_b[0, 1] = [x for x in range(8) if x not in b[0, 1]][:2]  # one pair that differs
    reference = {"0": a[:, :, ::-1].copy(), "1": ref_b}  # order inside a top-k does not matter
    result = oracle.compare(logs_of(path), reference, [0, 1])
    assert result.requests == 2 and result.reference_tokens == 10
    assert result.logged_tokens == 8 and result.pairs == 20
    assert result.missing == 4  # request 1, positions 3 and 4, both layers
    assert result.duplicates == 2  # request 0 position 1 logged twice (recomputed), both layers
    assert result.unknown == 2  # request 9 is not in the reference
    assert result.identical == 20 - 4 - 1
    assert result.as_dict()["agreement"] == 15 / 20


def test_prefix_cached_positions_are_left_out(tmp_path):
    rng = np.random.default_rng(1)
    ids = distinct_ids(rng, 6, 2, 2, 8)
    path = write_log(tmp_path / "l.jsonl", [ids[4:]], requests=[("0-x", 4)])  # 0..3 came from cache
    result = oracle.compare(logs_of(path), {"0": ids}, [0, 1], skip_positions={"0": 4})
    assert (result.reference_tokens, result.logged_tokens, result.pairs) == (2, 2, 4)
    assert result.identical == 4 and result.missing == 0


def test_logged_tokens_of_a_request_output():
    """Prompt minus prefix-cache hits, plus every generated token but the last."""
    from types import SimpleNamespace

    def output(prompt: int, generated: int, cached):
        return SimpleNamespace(
            prompt_token_ids=list(range(prompt)),
            num_cached_tokens=cached,
            outputs=[SimpleNamespace(token_ids=list(range(generated)))],
        )

    assert oracle.logged_tokens(output(10, 4, None)) == 13
    assert oracle.logged_tokens(output(10, 4, 0)) == 13
    assert oracle.logged_tokens(output(300, 1, 256)) == 44


def test_requests_spread_over_rank_files(tmp_path):
    rng = np.random.default_rng(2)
    a, b = distinct_ids(rng, 4, 2, 2, 8), distinct_ids(rng, 3, 2, 2, 8)
    paths = [
        write_log(
            tmp_path / f"r.h.dp{dp}-pp0.jsonl",
            [ids],
            requests=[(f"{dp}-ffff", 0)],
            ranks={"dp": dp},
        )
        for dp, ids in ((0, a), (1, b))
    ]
    logs = routes.open_logs(paths)
    result = oracle.compare(logs, {"0": a, "1": b[:2]}, [0, 1])
    assert (result.pairs, result.identical, result.missing) == (12, 12, 0)
    assert (result.unknown, result.duplicates, result.logged_tokens) == (2, 0, 6)
