"""Token specialisation (moe_profiler/analysis/token_experts.py)."""

from helpers import route_block

from moe_profiler.analysis import token_experts
from moe_profiler.reading.columns import PREFILL

# N=6 lines: n_e = 4 for every expert; n_t: token 7 x3, 9 x2, 8 x1
LINES = [(7, [0, 1]), (7, [1, 0]), (7, [1, 2]), (9, [0, 2]), (9, [2, 0]), (8, [1, 2])]


def feed(acc, lines, per_block=2, layers=(4,)):
    for start in range(0, len(lines), per_block):
        chunk = lines[start : start + per_block]
        acc.add(
            route_block(
                [
                    (1, start + i, layer, 0, 0, tok, PREFILL, e, None)
                    for i, (tok, e) in enumerate(chunk)
                    for layer in layers
                ],
                ["r-1"],
            )
        )


def entry(token, count, lift):
    return {"token": token, "count": count, "lift": lift}


def test_lift_ranking_and_min_count(monkeypatch):
    monkeypatch.setattr(token_experts, "_MERGE_EVERY", 3)  # merge the sparse counts often
    acc = token_experts.TokenSpecialisation([4], num_experts=3, top_k=2)
    feed(acc, [*LINES, (-1, [0, 1])])  # a line without a token id is left out
    # lift = count * N / (n_e * n_t)
    assert acc.result(top=10, min_count=1)["4"] == {
        "0": [entry(9, 2, 1.5), entry(7, 2, 1.0)],  # 2*6/(4*2), 2*6/(4*3)
        "1": [entry(7, 3, 1.5), entry(8, 1, 1.5)],  # equal lift: more often first
        "2": [entry(9, 2, 1.5), entry(8, 1, 1.5), entry(7, 1, 0.5)],
    }
    assert acc.result(top=10, min_count=2)["4"] == {
        "0": [entry(9, 2, 1.5), entry(7, 2, 1.0)],
        "1": [entry(7, 3, 1.5)],
        "2": [entry(9, 2, 1.5)],
    }
    assert acc.result(top=1, min_count=1, decode=lambda t: f"<{t}>")["4"]["2"] == [
        {**entry(9, 2, 1.5), "text": "<9>"}
    ]


def test_merging_does_not_change_the_counts(monkeypatch):
    once = token_experts.TokenSpecialisation([4, 6], 3, 2)
    feed(once, LINES, per_block=6, layers=(4, 6))
    monkeypatch.setattr(token_experts, "_MERGE_EVERY", 1)
    often = token_experts.TokenSpecialisation([4, 6], 3, 2)
    feed(often, LINES, per_block=1, layers=(4, 6))
    assert often.result(min_count=1) == once.result(min_count=1)
    assert often.result(min_count=1)["6"] == once.result(min_count=1)["4"]
    assert often.cells() == 2 * 7  # distinct (expert, token) pairs seen, per layer


def test_layers_filter():
    acc = token_experts.TokenSpecialisation([4, 6], 3, 2)
    feed(acc, LINES)
    assert list(acc.result(min_count=1, layers=[4])) == ["4"]
    assert acc.result(min_count=1)["6"] == {}
