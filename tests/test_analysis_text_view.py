"""One request's tokens coloured by expert (moe_profiler/analysis/text_view.py)."""

import json
import re

from helpers import route_block

from moe_profiler.analysis import text_view
from moe_profiler.reading.columns import DECODE, PREFILL

REQUESTS = ["0-aaaaaaaa", "7-bbbbbbbb", "12-cccccccc"]


def lines(request, positions, step=1, layers=(0, 2), phase=PREFILL):
    """Top-1 at layer l of position p: (p + l) % 4, listed second."""
    return [
        (
            step,
            i,
            layer,
            request,
            p,
            100 + p,
            phase,
            [(p + layer + 1) % 4, (p + layer) % 4],
            [0.2, 0.8],
        )
        for i, p in enumerate(positions)
        for layer in layers
    ]


def test_named_request_in_position_order_first_lines_win():
    acc = text_view.RequestTokens([0, 2], request="7")
    acc.add(route_block(lines(0, [0, 1]) + lines(1, [0, 1, 2]), REQUESTS))
    acc.add(route_block(lines(1, [3], step=2, phase=DECODE), REQUESTS))
    # preempted and recomputed: position 1 again, with other experts (must not win)
    recomputed = [(3, 0, 0, 1, 1, 101, PREFILL, [3, 2], [0.9, 0.1])]
    acc.add(route_block(recomputed + lines(1, [4], step=3, layers=(0,), phase=DECODE), REQUESTS))
    view = acc.result()
    assert view["request"] == "7-bbbbbbbb" and view["source"] == 0
    assert view["positions"] == [0, 1, 2, 3, 4]
    assert view["tokens"] == [100, 101, 102, 103, 104]
    assert view["phase"] == ["prefill"] * 3 + ["decode"] * 2
    assert view["top1"]["0"] == [0, 1, 2, 3, 0]
    assert view["top1"]["2"] == [2, 3, 0, 1, -1]  # position 4 has no layer-2 line
    assert view["weight"]["0"] == [0.8] * 5


def test_default_is_the_longest_of_the_first_candidates():
    acc = text_view.RequestTokens([0], candidates=2)
    acc.add(route_block(lines(0, [0], layers=(0,)) + lines(1, [0, 1], layers=(0,)), REQUESTS))
    acc.add(route_block(lines(2, [0, 1, 2, 3], layers=(0,)), REQUESTS))  # third: not kept
    assert acc.result()["request"] == "7-bbbbbbbb"
    assert acc.seen() == REQUESTS


def test_missing_request():
    acc = text_view.RequestTokens([0], request="99")
    acc.add(route_block(lines(0, [0], layers=(0,)), REQUESTS))
    assert acc.result() is None and acc.seen() == ["0-aaaaaaaa"]


def test_render_colours_escapes_and_embeds_every_layer():
    acc = text_view.RequestTokens([0, 2], request="7-bbbbbbbb")
    acc.add(route_block(lines(1, [0, 1]) + lines(1, [2], step=2, phase=DECODE), REQUESTS))
    view = acc.result()
    texts = {100: "<b>", 101: " x\n", 102: "&"}
    page = text_view.render(view, num_experts=4, layer=2, decode=texts.get)
    colours = text_view.expert_colours(4)
    assert len(set(colours)) == 4
    backgrounds = re.findall(r'class="tok (\w+)" data-i="\d" style="background:(#\w+)"', page)
    assert backgrounds == [
        ("prefill", colours[2]),
        ("prefill", colours[3]),
        ("decode", colours[0]),
    ]
    assert "&lt;b&gt;" in page and "<b>" not in page.split("<script")[0]
    assert " x&#8629;\n" in page and page.count("generated &#9656;") == 1
    assert '<option value="2" selected>layer 2</option>' in page
    data = json.loads(page.split('id="tv-data">')[1].split("</script>")[0])
    assert data["top1"] == {"0": [0, 1, 2], "2": [2, 3, 0]}
    assert data["texts"] == ["<b>", " x\n", "&"]
