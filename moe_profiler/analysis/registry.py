"""Every analysis of the report, in page order: to add one, write its module and list it here."""

from __future__ import annotations

import textwrap

from moe_profiler.analysis import (
    coactivation,
    compare,
    expert_parallel,
    layer_paths,
    load,
    locality,
    text_view,
    time_series,
    token_experts,
)
from moe_profiler.analysis.description import Analysis

ANALYSES: list[Analysis] = [
    load.ANALYSIS,
    time_series.ANALYSIS,
    expert_parallel.ANALYSIS,
    coactivation.ANALYSIS,
    layer_paths.ANALYSIS,
    locality.ANALYSIS,
    token_experts.ANALYSIS,
    text_view.ANALYSIS,
    compare.ANALYSIS,
]


def sections_help(width: int = 88) -> str:
    """The sections of analysis.json and the question each answers, for --help."""
    lines = ["analysis.json sections, one question each:"]
    for analysis in ANALYSES:
        lines.append(f"  {', '.join(analysis.keys)}")
        lines += textwrap.wrap(
            analysis.question, width, initial_indent=" " * 6, subsequent_indent=" " * 6
        )
    return "\n".join(lines)
