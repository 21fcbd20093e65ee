"""Text view: the tokens of one request, each coloured by its top-1 expert at a layer.

The collector keeps one request's lines (its tokens, phases and the top-1 expert and
weight at every logged layer): the one named by ``request`` (vLLM's internal id, or
the caller's id before vLLM's ``-<8 hex>`` suffix; the first file that has it), or by
default the longest of the first ``candidates`` requests of the read. Memory: at most
``candidates`` requests' lines. ``render`` makes an HTML fragment; a layer menu
recolours it in the browser (the data is embedded; without scripts the first layer
shown stays); ``SCRIPT`` does that and follows the fragment on the page.
"""

from __future__ import annotations

import colorsys
import html
import json
from collections.abc import Callable

import numpy as np

from moe_profiler.analysis.common import LayerRows
from moe_profiler.analysis.description import Analysis, Finished, Need, Run
from moe_profiler.analysis.html_parts import note
from moe_profiler.reading.columns import DECODE, PREFILL, RouteBlock


class RequestTokens:
    """Lines of one request (chosen by id, or the longest of the first few). Feed with ``add``."""

    def __init__(self, layers: list[int], request: str | None = None, candidates: int = 16) -> None:
        self.rows = LayerRows(layers)
        self.request, self.candidates = request, candidates
        self._keys: list[tuple[int, int]] = []  # (source, request index), first seen first
        self._names: dict[tuple[int, int], str] = {}
        self._parts: dict[tuple[int, int], list[tuple]] = {}
        self._first_seen: list[str] = []  # the first few request ids of the read, for messages

    def add(self, block: RouteBlock) -> None:
        """Keep the lines of the chosen (or candidate) requests in ``block``."""
        present, first = np.unique(block.request, return_index=True)
        for index in present[np.argsort(first)]:
            name = block.requests[index] if index >= 0 else None
            if name is not None and len(self._first_seen) < 8 and name not in self._first_seen:
                self._first_seen.append(name)  # a request spans blocks: name it once
            key = (block.source, int(index))
            if key in self._parts or not self._wanted(block.requests, int(index)):
                continue
            self._keys.append(key)
            self._names[key] = block.requests[index]
            self._parts[key] = []
        for key in self._keys:
            if key[0] != block.source:
                continue
            mine = block.request == key[1]
            if mine.any():
                best = np.argmax(block.weights[mine], axis=1)
                self._parts[key].append(
                    (
                        block.pos[mine],
                        block.tok[mine],
                        block.phase[mine],
                        self.rows.rows(block.layer[mine]),
                        block.experts[mine][np.arange(len(best)), best],
                        block.weights[mine][np.arange(len(best)), best],
                    )
                )

    def _wanted(self, requests: list[str], index: int) -> bool:
        if index < 0:
            return False
        if self.request is None:
            return len(self._keys) < self.candidates
        name = requests[index]
        return not self._keys and self.request in (name, name.rsplit("-", 1)[0])

    def seen(self) -> list[str]:
        """The first request ids of the read (up to 8): what ``request`` could have named."""
        return list(self._first_seen)

    def result(self) -> dict | None:
        """The request's tokens by position, top-1 and weight per layer (None: not seen)."""
        if not self._keys:
            return None
        sizes = {
            key: len(np.unique(np.concatenate([part[0] for part in parts])))
            for key, parts in self._parts.items()
        }
        key = max(self._keys, key=lambda k: (sizes[k], -self._keys.index(k)))
        pos, tok, phase, row, top1, weight = (
            np.concatenate(c) for c in zip(*self._parts[key], strict=True)
        )
        positions, first = np.unique(pos, return_index=True)  # a recomputed token: its first lines
        cells, first_line = np.unique(
            row * len(positions) + np.searchsorted(positions, pos), return_index=True
        )
        top1_table = np.full((len(self.rows), len(positions)), -1, dtype=np.int64)
        weight_table = np.zeros((len(self.rows), len(positions)))
        top1_table.ravel()[cells] = top1[first_line]
        weight_table.ravel()[cells] = weight[first_line]
        return {
            "request": self._names[key],
            "source": key[0],
            "positions": positions.tolist(),
            "tokens": tok[first].tolist(),
            "phase": [
                "prefill" if p == PREFILL else "decode" if p == DECODE else "?"
                for p in phase[first]
            ],
            "top1": {
                str(layer): top1_table[r].tolist() for r, layer in enumerate(self.rows.layers)
            },
            "weight": {
                str(layer): np.round(weight_table[r], 4).tolist()
                for r, layer in enumerate(self.rows.layers)
            },
        }


def expert_colours(num_experts: int) -> list[str]:
    """One light background colour per expert (golden-ratio hues, two lightness levels)."""
    colours = []
    for e in range(num_experts):
        hue = (e * 0.618033988749895) % 1.0
        red, green, blue = colorsys.hls_to_rgb(hue, 0.78 if e % 2 == 0 else 0.66, 0.75)
        colours.append(f"#{int(red * 255):02x}{int(green * 255):02x}{int(blue * 255):02x}")
    return colours


def render(view: dict, num_experts: int, layer: int, decode: Callable[[int], str] | None) -> str:
    """HTML: the request's tokens coloured by top-1 expert at ``layer``, and a layer menu."""
    colours = expert_colours(num_experts)
    texts = [decode(t) if decode and t >= 0 else f"[{t}]" for t in view["tokens"]]
    spans = []
    for i, (text, phase) in enumerate(zip(texts, view["phase"], strict=True)):
        if phase == "decode" and (i == 0 or view["phase"][i - 1] != "decode"):
            spans.append('<span class="boundary">generated &#9656;</span>')
        expert = view["top1"][str(layer)][i]
        shown = html.escape(text).replace("\n", "&#8629;\n") or "&#8203;"
        colour = colours[expert] if expert >= 0 else "#eee"
        spans.append(
            f'<span class="tok {phase}" data-i="{i}" style="background:{colour}" '
            f'title="{_tooltip(view, texts, i, layer)}">{shown}</span>'
        )
    options = "".join(
        f'<option value="{x}"{" selected" if int(x) == layer else ""}>layer {x}</option>'
        for x in view["top1"]
    )
    data = {
        "colours": colours,
        "texts": texts,
        "positions": view["positions"],
        "phase": view["phase"],
        "top1": view["top1"],
        "weight": view["weight"],
    }
    return (
        f'<div class="textview"><label>colour by top-1 expert at '
        f'<select id="tv-layer">{options}</select></label>'
        f'<div class="tokens" id="tv-tokens">{"".join(spans)}</div></div>'
        f'<script type="application/json" id="tv-data">{_script_safe(json.dumps(data))}</script>'
    )


def _tooltip(view: dict, texts: list[str], i: int, layer: int) -> str:
    expert = view["top1"][str(layer)][i]
    return html.escape(
        f"pos {view['positions'][i]} ({view['phase'][i]}), token {view['tokens'][i]} "
        f"{texts[i]!r}: expert {expert} (weight {view['weight'][str(layer)][i]}) at layer {layer}",
        quote=True,
    )


def _script_safe(text: str) -> str:
    return text.replace("</", "<\\/")


SCRIPT = """
(function () {
  var data = JSON.parse(document.getElementById("tv-data").textContent);
  var menu = document.getElementById("tv-layer");
  function recolour() {
    var layer = menu.value;
    var spans = document.querySelectorAll("#tv-tokens .tok");
    for (var k = 0; k < spans.length; k++) {
      var i = Number(spans[k].dataset.i);
      var expert = data.top1[layer][i];
      spans[k].style.background = expert >= 0 ? data.colours[expert] : "#eee";
      spans[k].title = "pos " + data.positions[i] + " (" + data.phase[i] + "), " +
        JSON.stringify(data.texts[i]) + ": expert " + expert + " (weight " +
        data.weight[layer][i] + ") at layer " + layer;
    }
  }
  menu.addEventListener("change", recolour);
  recolour();
})();
"""


def section(done: Finished, figure_uri: str | None) -> str:
    """The coloured text with its layer menu and script, or why there is none."""
    summary, run = done.results["text_view"], done.run
    view = done.accumulator.result()
    if view:
        return (
            f'<p class="caption">Request {html.escape(summary["request"])} '
            f"({summary['tokens']} tokens): each token coloured by its top-1 expert at the "
            "chosen layer (hover for position, token id, expert and weight; underlined tokens "
            "were generated).</p>"
            + render(view, run.num_experts, run.layer, run.decode)
            + f"<script>{SCRIPT}</script>"
        )
    if summary["request"] is None:
        return note("No text view: no request was read (no route lines).")
    seen = ", ".join(summary["seen"][:8]) if summary.get("seen") else "none"
    return note(
        f"No text view: request {html.escape(str(summary['request']))} is not in the logs "
        f"(its first requests: {html.escape(seen)})."
    )


def _results(tokens: RequestTokens, run: Run) -> dict:
    view = tokens.result()
    if view is None:
        return {
            "text_view": {"request": run.options.request, "found": False, "seen": tokens.seen()}
        }
    return {
        "text_view": {
            "request": view["request"],
            "source": view["source"],
            "tokens": len(view["tokens"]),
            "layer": run.layer,
        }
    }


ANALYSIS = Analysis(
    key="text_view",
    title="One request, token by token",
    question="Which expert did each token of one request go to, at each logged layer?",
    keys=("text_view",),
    needs=frozenset({Need.TOKEN_ROUTES, Need.WEIGHTS, Need.REQUESTS}),
    start=lambda run: RequestTokens(run.layers, run.options.request),
    results=_results,
    section=section,
)
