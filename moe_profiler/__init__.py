"""The toolkit around the route logger, by audience (the logger itself is ``moe_route_log``).

reading/       route logs back as numpy columns, checked and merged; Parquet export
analysis/      one module per question, the report (analyze_routes.py), the usage summary
               (plot_experts.py)
running/       running vLLM with the log: prompts, timed generation, tiny local models
verification/  what only tests and benchmarks use: reference records, family rules, a browser
patching.py    the logger's change to vLLM 0.15.1: the .patch and apply_hook.py (it stays here
               while the plugin work reworks it: it finds the repository by its own path)
cli.py         the ``moe-profiler`` command (analyze, plot, export)

``from moe_profiler import routes`` (the reader, as the README shows it) is
``moe_profiler.reading.routes``.
"""

from __future__ import annotations

from types import ModuleType


def __getattr__(name: str) -> ModuleType:
    """The README's ``from moe_profiler import routes``, imported when first asked for."""
    if name == "routes":
        from moe_profiler.reading import routes

        return routes
    raise AttributeError(f"module 'moe_profiler' has no attribute {name!r}")
