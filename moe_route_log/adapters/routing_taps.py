"""The plugin's taps: a logged layer hands its routes to its recorder, editing no vLLM file.

The patch puts ``recorder.record(...)`` inside ``FusedMoE.forward_impl``; the plugin
gets the same call by wrapping, on the logged layer's own objects only, the call that
routes (unlogged layers keep vLLM's code untouched):

- modular kernels: ``router.select_experts(hidden_states=, router_logits=, ...)`` ->
  ``(topk_weights, topk_ids)`` (0.15.1 ``layer.py:1877``; 0.34.0
  ``runner/moe_runner.py:644-649``);
- monolithic kernels, which route inside the kernel: the kernel call, whose router
  logits the recorder routes again purely (0.15.1 ``quant_method.apply_monolithic(
  layer=, x=, router_logits=)``, ``layer.py:1870``; 0.34.0
  ``routed_experts.forward_monolithic(x=, router_logits=, ...)``,
  ``moe_runner.py:630-640``).

The wrappers are plain Python around vLLM's call: captured into CUDA graphs with it,
and traced by torch.compile where vLLM traces the layer (the CPU build), where the
recorder's own registered op keeps the copy in the graph.
"""

from __future__ import annotations

import functools

from .moe_layers import MoELayer


class UnsupportedLayerError(ValueError):
    """The plugin cannot tap this layer's routes exactly (the patch can)."""


def check(layer: MoELayer) -> None:
    """Raise when the plugin's taps would miss or misplace this layer's routes."""
    if layer.chunked:
        raise UnsupportedLayerError(
            "the chunked MoE forward of vLLM 0.15.1 (data parallel with pplx/DeepEP/"
            "mori/FlashInfer all2all kernels, VLLM_ENABLE_MOE_DP_CHUNK=1): the plugin cannot "
            "place each chunk's rows; set VLLM_ENABLE_MOE_DP_CHUNK=0 or apply the patch "
            "(apply_hook.py)"
        )


def install(layer: MoELayer, recorder) -> None:
    """Make ``layer`` call ``recorder.record`` with its routes on every forward pass."""
    check(layer)
    if not layer.monolithic:
        _wrap(layer.router, "select_experts", functools.partial(_after_select, recorder, layer))
    elif hasattr(layer.module, "routed_experts"):  # 0.24+: forward_monolithic(x, router_logits)
        _wrap(layer.module.routed_experts, "forward_monolithic", _before_kernel(recorder, layer, 0))
    else:  # 0.15.1: apply_monolithic(layer, x, router_logits)
        _wrap(layer.quant_method, "apply_monolithic", _before_kernel(recorder, layer, 1))


def _wrap(owner, name: str, make) -> None:
    """Shadow ``owner.name`` with ``make(original)``, on this object only."""
    original = getattr(owner, name)
    setattr(owner, name, functools.wraps(original)(make(original)))


def _after_select(recorder, layer: MoELayer, select):
    def select_experts(*args, **kwargs):
        topk_weights, topk_ids = select(*args, **kwargs)
        hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        router_logits = kwargs["router_logits"] if "router_logits" in kwargs else args[1]
        recorder.record(
            hidden_states, router_logits, topk_weights, topk_ids, gathered=layer.gathered
        )
        return topk_weights, topk_ids

    return select_experts


def _before_kernel(recorder, layer: MoELayer, x_index: int):
    """``x_index``: where ``x`` stands among the kernel call's positional arguments
    (``router_logits`` right after it), for callers that pass them by position."""

    def make(kernel):
        def routed_kernel(*args, **kwargs):
            x = kwargs["x"] if "x" in kwargs else args[x_index]
            router_logits = (
                kwargs["router_logits"] if "router_logits" in kwargs else args[x_index + 1]
            )
            if isinstance(x, tuple):  # 0.15.1's fp4 hack: (hidden states, scales)
                x = x[0]
            recorder.record(x, router_logits, gathered=layer.gathered)
            return kernel(*args, **kwargs)

        return routed_kernel

    return make
