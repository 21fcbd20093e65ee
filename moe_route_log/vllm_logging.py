"""The logger's messages go through vLLM's own logging, whichever way it is installed.

vLLM configures the ``vllm`` logger tree only: the patch's copy of this package lives
inside it (``vllm.model_executor.layers.fused_moe.moe_route_log``), the plugin's does
not (``moe_route_log``), and a logger outside the tree drops its INFO messages.
"""

from __future__ import annotations


def get_logger(module: str):
    """vLLM's logger for ``module`` (a ``__name__``), placed in vLLM's logger tree."""
    from vllm.logger import init_logger

    return init_logger(module if module.startswith("vllm.") else f"vllm.{module}")
