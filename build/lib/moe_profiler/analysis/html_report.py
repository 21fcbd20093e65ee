"""The report: one self-contained HTML page (figures embedded, opens offline).

Every section says which question it answers, then in one sentence what its figure
shows, then the figure and a table. It only lays out results computed elsewhere
(``analysis.json``'s sections, figures as PNG data URIs, the text view's fragment).
"""

from __future__ import annotations

import base64
import html
import io

from moe_profiler.analysis import text_view

_STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { margin-top: 2.2em; border-bottom: 1px solid #ccc; }
.question { font-style: italic; color: #444; } .caption { font-weight: 600; margin: 1em 0 0.3em; }
img { max-width: 100%; border: 1px solid #eee; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f4f4f4; } td.left, th.left { text-align: left; }
.note { color: #555; font-size: 0.9em; } nav a { margin-right: 1em; }
.tokens { white-space: pre-wrap; font-family: ui-monospace, monospace; line-height: 1.9;
          border: 1px solid #ddd; padding: 0.6em; max-height: 32em; overflow-y: auto; }
.tok { border-radius: 3px; padding: 1px 0; } .tok.decode { border-bottom: 2px solid #333; }
.boundary { color: #fff; background: #333; font-size: 0.75em; padding: 1px 4px; margin: 0 3px;
            border-radius: 3px; }
"""


def png_data_uri(fig) -> str:
    """A matplotlib figure as a ``data:image/png;base64,...`` URI (the figure is closed)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def render(analysis: dict, figures: dict[str, str], view_html: str | None, layer: int) -> str:
    """The whole page."""
    meta = analysis["meta"]
    sections = [
        ("load", "Load: prefill and decode", _load(analysis, figures, layer)),
        ("ep", "Expert-parallel what-if", _expert_parallel(analysis, figures)),
        ("coactivation", "Co-activation", _coactivation(analysis, figures, layer)),
        ("paths", "Layer paths", _paths(analysis, figures)),
        ("locality", "Temporal locality", _locality(analysis, figures)),
        ("tokens", "Token specialisation", _tokens(analysis, layer, view_html)),
    ]
    if "compare" in analysis:
        sections.append(("compare", "Compare two runs", _compare(analysis, figures)))
    nav = "".join(f'<a href="#{key}">{html.escape(name)}</a>' for key, name, _ in sections)
    body = "".join(
        f'<h2 id="{key}">{html.escape(name)}</h2>{content}' for key, name, content in sections
    )
    script = f"<script>{text_view.SCRIPT}</script>" if view_html else ""
    title = f"MoE routing report: {meta['model_name']}"
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{_overview(analysis)}<nav>{nav}</nav>{body}"
        f'<p class="note">Written by <code>analyze_routes.py</code> with '
        f"<code>analysis.json</code> (every number on this page) and "
        f"<code>sglang_logical_count.json</code> next to it.</p>{script}</body></html>\n"
    )


def _overview(analysis: dict) -> str:
    meta = analysis["meta"]
    first = str(meta["layers"][0])
    phases = analysis["prefill_decode"][first]
    rows = [
        ("model", html.escape(str(meta["model_id"]))),
        ("run", html.escape(str(meta["run_id"]))),
        ("log files", "<br>".join(html.escape(f) for f in meta["files"])),
        (
            "route lines",
            f"{meta['route_lines']:,}"
            + ("" if meta["complete"] else " (log incomplete: no trailer)"),
        ),
        ("layers logged", _layer_list(meta["layers"])),
        ("experts, top-k", f"{meta['num_experts']}, {meta['top_k']}"),
        (
            f"tokens (layer {first})",
            ", ".join(f"{phase} {v['tokens']:,}" for phase, v in phases.items()),
        ),
        ("tokenizer", html.escape(meta["tokenizer"] or "none (token ids shown as [id])")),
    ]
    table = "".join(
        f'<tr><th class="left">{key}</th><td class="left">{value}</td></tr>' for key, value in rows
    )
    return (
        "<p>Which experts a Mixture-of-Experts model chose for every token, read from vLLM "
        "route logs (<code>VLLM_LOG_MOE</code>). Each line of a log is one token at one layer: "
        "its top-k experts and their router weights. <em>Top-1</em> below is the expert "
        "with the largest weight; a <em>pass</em> is one forward step of the engine.</p>"
        f"<table>{table}</table>"
    )


def _layer_list(layers: list[int]) -> str:
    if layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 2:
        return f"{layers[0]}-{layers[-1]} ({len(layers)})"
    return ", ".join(map(str, layers))


def _figure(figures: dict[str, str], name: str, caption: str) -> str:
    if name not in figures:
        return '<p class="note">No figure: no data for it in these logs.</p>'
    return f'<p class="caption">{html.escape(caption)}</p><img alt="{name}" src="{figures[name]}">'


def _table(head: list[str], rows: list[list], left: int = 1) -> str:
    cells = lambda row, tag: "".join(  # noqa: E731
        f"<{tag}{' class=left' if i < left else ''}>{html.escape(str(c))}</{tag}>"
        for i, c in enumerate(row)
    )
    return (
        f"<table><tr>{cells(head, 'th')}</tr>"
        + "".join(f"<tr>{cells(row, 'td')}</tr>" for row in rows)
        + "</table>"
    )


def _num(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _load(analysis: dict, figures: dict, layer: int) -> str:
    rows = []
    for key, phases in analysis["prefill_decode"].items():
        row = [key]
        for phase in ("prefill", "decode"):
            v = phases.get(phase, {})
            hot = ", ".join(str(h["expert"]) for h in v.get("hottest", []))
            row += [f"{v.get('tokens', 0):,}", _num(v.get("max_over_mean"), 2), hot or "-"]
        rows.append(row)
    return (
        '<p class="question">Which experts does the model use, and do prompt tokens (prefill) '
        "use them differently from generated tokens (decode)?</p>"
        + _figure(
            figures,
            "load",
            f"Top: each expert's share of the choices at layer {layer}, prefill (blue) next to "
            "decode (orange), dashed line = every expert equally used; below: every logged "
            "layer's usage relative to that even share.",
        )
        + _table(
            [
                "layer",
                "prefill tokens",
                "prefill max/mean",
                "prefill hottest",
                "decode tokens",
                "decode max/mean",
                "decode hottest",
            ],
            rows,
        )
        + '<p class="note">max/mean: the hottest expert\'s load over the mean load (1 = even). '
        "Counts, mean router weights, entropy and Jain's index per phase: "
        "<code>analysis.json</code> → <code>prefill_decode</code>, <code>load</code>.</p>"
    )


def _expert_parallel(analysis: dict, figures: dict) -> str:
    info, ep = analysis["ep_info"], analysis["ep"]
    names = ["contiguous", "eplb", "eplb_redundant"]
    head, rows = ["GPUs"], []
    for name in names:
        if any(name in v for v in ep.values()):
            head += [f"{name} per pass", f"{name} totals"]
    for size, placements in ep.items():
        row = [size]
        for name in names:
            if name in placements:
                p = placements[name]
                redundant = f" (+{p['redundant']})" if name != "contiguous" else ""
                row += [_num(p["balancedness"]) + redundant, _num(p["balancedness_of_totals"])]
        rows.append(row)
    eplb = (
        f"EPLB placements come from {html.escape(info['eplb'])}, fitted on this run's whole-run "
        "loads and scored on the same run: the best EPLB could do for this traffic. "
        "(+R) is the number of redundant experts (extra copies of hot experts)."
        if info["eplb_available"]
        else f"<strong>EPLB skipped:</strong> {html.escape(info['eplb'])}."
    )
    return (
        '<p class="question">Serving this model with expert parallelism on N GPUs (each GPU '
        "holds some experts), how unevenly are the GPUs loaded, step by step, and what would "
        "vLLM's expert-parallel load balancer (EPLB) change?</p>"
        + _figure(
            figures,
            "ep",
            "Balancedness (mean GPU load / busiest GPU's load, 1 = perfectly even) against the "
            "number of GPUs, per forward pass (solid) and on the whole run's totals (dashed).",
        )
        + _table(head, rows)
        + f'<p class="note">{info["passes"]:,} passes. A GPU\'s load is the number of '
        "(token, expert choice) pairs landing on its experts; per-pass values are averaged over "
        "passes weighted by their tokens and over layers. <em>contiguous</em> is vLLM's default "
        f"placement (expert ids split in equal ranges). {eplb} A replicated expert's load is "
        "split evenly between its copies (vLLM alternates copies by position in the batch). "
        "<code>sglang_logical_count.json</code> holds the per-layer loads in the format "
        "SGLang's <code>--init-expert-location</code> reads.</p>"
    )


def _coactivation(analysis: dict, figures: dict, layer: int) -> str:
    pairs = analysis["coactivation"][str(layer)]["top_pairs"]
    rows = [
        [f"{p['experts'][0]} + {p['experts'][1]}", f"{p['count']:,}", _num(p["lift"], 2)]
        for p in pairs
    ]
    return (
        '<p class="question">Which experts are chosen together for the same token, more (or '
        "less) often than chance?</p>"
        + _figure(
            figures,
            "coactivation",
            f"Layer {layer}: for every pair of experts, how much more often they share a token's "
            "top-k than independent choices at the same loads would (red: more often, blue: "
            "less often, log2 scale).",
        )
        + (
            _table(["pair", "tokens with both", "lift"], rows)
            if rows
            else '<p class="note">No pair reached the minimum count.</p>'
        )
        + '<p class="note">lift = tokens with both × all tokens / (tokens with a × tokens with '
        "b); pairs seen fewer than the minimum count are not listed. Every layer: "
        "<code>analysis.json</code> → <code>coactivation</code>.</p>"
    )


def _paths(analysis: dict, figures: dict) -> str:
    rows = []
    for pair, v in analysis["transitions"].items():
        best = v["top"][0] if v["top"] else None
        rows.append(
            [
                pair,
                f"{v['tokens']:,}",
                _num(v["mutual_information_bits"]),
                _num(v["mi_bias_bits"]),
                _num(v["entropy_to_bits"]),
                f"{best['from']} → {best['to']} (p {best['p']:.2f})" if best else "-",
            ]
        )
    if not rows:
        return '<p class="note">Only one layer was logged: no layer pairs.</p>'
    return (
        '<p class="question">Does the expert a token uses at one layer predict the expert it '
        "uses at the next layer?</p>"
        + _figure(
            figures,
            "transitions",
            "Left: for a token whose top-1 expert at layer l is the row, the chance that its "
            "top-1 at the next logged layer is the column; right: mutual information between "
            "the two choices for every pair of adjacent logged layers (red mark: what "
            "unrelated layers would show with this many tokens).",
        )
        + _table(
            [
                "layers",
                "tokens",
                "mutual information (bits)",
                "expected if unrelated",
                "entropy of the next top-1",
                "strongest transition",
            ],
            rows,
        )
        + '<p class="note">Mutual information 0 = no prediction; equal to the entropy of the '
        "next top-1 = fully determined.</p>"
    )


def _locality(analysis: dict, figures: dict) -> str:
    rows = [
        [
            layer,
            f"{v['pairs']:,}",
            _num(v["same_top1"]),
            _num(v["same_top1_independent"]),
            _num(v["jaccard"]),
            _num(v["jaccard_independent"]),
        ]
        for layer, v in analysis["locality"].items()
    ]
    return (
        '<p class="question">Do consecutive generated tokens of one request stick to the same '
        "experts (what expert caching and offloading rely on)?</p>"
        + _figure(
            figures,
            "locality",
            "Per layer, for consecutive decode tokens of one request: left, how often the top-1 "
            "expert repeats; right, how much the two top-k sets overlap (Jaccard); blue "
            "measured, red what independent tokens at the same loads would give.",
        )
        + _table(
            ["layer", "token pairs", "same top-1", "independent", "Jaccard", "independent"], rows
        )
        + '<p class="note">Jaccard = shared experts / experts in either set. Prompt tokens are '
        "not counted (they are processed together, not one after another).</p>"
    )


def _tokens(analysis: dict, layer: int, view_html: str | None) -> str:
    experts = analysis["token_experts"].get(str(layer), {})
    ranked = sorted(experts.items(), key=lambda kv: -kv[1][0]["lift"])[:16]
    rows = [
        [
            expert,
            ", ".join(f"{_token_text(t)} ×{t['lift']:.1f} ({t['count']})" for t in tokens[:5]),
        ]
        for expert, tokens in ranked
    ]
    view = analysis["text_view"]
    if view_html:
        view_part = (
            f'<p class="caption">Request {html.escape(view["request"])} ({view["tokens"]} '
            f"tokens): each token coloured by its top-1 expert at the chosen layer (hover for "
            "position, token id, expert and weight; underlined tokens were generated).</p>"
            + view_html
        )
    elif view["request"] is None:
        view_part = (
            '<p class="note">Text view: these logs have no request ids (schema 1) or no '
            "route lines.</p>"
        )
    else:
        seen = ", ".join(view["seen"][:8]) if view.get("seen") else "none"
        view_part = (
            f'<p class="note">Text view: request {html.escape(str(view["request"]))} is not in '
            f"the logs (its first requests: {html.escape(seen)}).</p>"
        )
    return (
        '<p class="question">Which tokens does each expert specialise in?</p>'
        + (
            _table(
                ["expert", "most over-represented tokens: text ×lift (times seen)"], rows, left=2
            )
            if rows
            else '<p class="note">No token reached the minimum count (or the logs carry no '
            "token ids: schema 3 logs do).</p>"
        )
        + f'<p class="note">Layer {layer}, the experts with the strongest preferences. lift = '
        "how much more often the expert sees the token than its share of all tokens predicts. "
        "Every layer and expert: <code>analysis.json</code> → <code>token_experts</code>.</p>"
        + view_part
    )


def _token_text(entry: dict) -> str:
    return repr(entry["text"]) if "text" in entry else f"[{entry['token']}]"


def _compare(analysis: dict, figures: dict) -> str:
    comparison = analysis["compare"]
    rows = [
        [
            layer,
            _num(v["jsd_bits"], 4),
            ", ".join(f"{m['expert']} ({m['delta'] * 100:+.1f} pts)" for m in v["moved"][:3]),
        ]
        for layer, v in comparison["layers"].items()
    ]
    return (
        '<p class="question">Does another prompt set (run B, <code>--compare</code>) route '
        "differently from this one (run A)?</p>"
        + _figure(
            figures,
            "compare",
            "Left: Jensen-Shannon divergence between the two runs' expert distributions per "
            "layer (0 = identical, 1 = disjoint); right: both runs' expert shares at the layer "
            "where they differ most.",
        )
        + _table(["layer", "JSD (bits)", "experts that moved most (B - A)"], rows)
        + '<p class="note">Run B: '
        + "<br>".join(html.escape(f) for f in comparison["b"]["files"])
        + "</p>"
    )
