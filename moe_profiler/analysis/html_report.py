"""The report: one self-contained HTML page (figures embedded, opens offline).

An overview of the run, then one section per analysis: its question, then what the
analysis' own ``section`` wrote (in one sentence what its figure shows, the figure, a
table). It only lays out what the analyses computed and wrote.
"""

from __future__ import annotations

import base64
import html
import io

from moe_profiler.analysis.description import Analysis
from moe_profiler.analysis.inputs import read_in_words
from moe_profiler.analysis.load import PHASE_LOOK, phases_seen

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


def render(results: dict, sections: list[tuple[Analysis, str]]) -> str:
    """The whole page: the overview, then each analysis' question and its section's HTML."""
    meta = results["meta"]
    nav = "".join(
        f'<a href="#{analysis.key}">{html.escape(analysis.title)}</a>' for analysis, _ in sections
    )
    body = "".join(
        f'<h2 id="{analysis.key}">{html.escape(analysis.title)}</h2>'
        f'<p class="question">{html.escape(analysis.question)}</p>{content}'
        for analysis, content in sections
    )
    title = f"MoE routing report: {meta['model_name']}"
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{_overview(results)}<nav>{nav}</nav>{body}"
        f'<p class="note">Written by <code>analyze_routes.py</code> with '
        f"<code>analysis.json</code> (every number on this page) and "
        f"<code>sglang_logical_count.json</code> next to it.</p></body></html>\n"
    )


def notes_html(sentences) -> str:
    """The sentences that say what a section leaves out, above it."""
    return "".join(f'<p class="note left-out">{html.escape(s)}</p>' for s in sentences)


def _overview(results: dict) -> str:
    meta = results["meta"]
    first = str(meta["layers"][0])
    phases = results.get("prefill_decode", {}).get(first, {})
    rows = [
        ("model", html.escape(str(meta["model_id"] or meta["model_name"]))),
        ("run", html.escape(str(meta["run_id"] or "-"))),
        ("inputs", "<br>".join(_input_line(one) for one in meta["inputs"])),
        ("layers", _layer_list(meta["layers"])),
        ("experts, top-k", f"{meta['num_experts']}, {meta['top_k']}"),
        (
            f"tokens (layer {first})",
            ", ".join(
                f"{PHASE_LOOK[phase][0]} {phases[phase]['tokens']:,}"
                for phase in phases_seen({first: phases})
            )
            or "-",
        ),
        ("tokenizer", html.escape(meta["tokenizer"] or "none (token ids shown as [id])")),
    ]
    table = "".join(
        f'<tr><th class="left">{key}</th><td class="left">{value}</td></tr>' for key, value in rows
    )
    return (
        "<p>Which experts a Mixture-of-Experts model chose for its tokens, read from vLLM "
        "route logs (<code>VLLM_LOG_MOE</code>: each line one token at one layer, its top-k "
        "experts and their router weights), counts logs and dumps (how often each expert was "
        "chosen, per time window) or vLLM's own <code>routed_experts</code> (each token's "
        "experts, no weights). A section an input cannot answer says so. <em>Top-1</em> "
        "below is the expert with the largest weight; a <em>pass</em> is one forward step of "
        "the engine.</p>"
        f"<table>{table}</table>"
    )


def _input_line(one: dict) -> str:
    """One input: its files, kind and what was read from it."""
    read = read_in_words(one) + ([] if one["complete"] else ["incomplete: no trailer"])
    files = ", ".join(one["files"])
    return html.escape(f"{files} ({one['kind']}: {', '.join(read) or 'nothing read'})")


def _layer_list(layers: list[int]) -> str:
    if layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 2:
        return f"{layers[0]}-{layers[-1]} ({len(layers)})"
    return ", ".join(map(str, layers))
