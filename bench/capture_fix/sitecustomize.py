"""Bench only: make vLLM 0.15.1's own routed-experts capture work, in every process.

vLLM 0.15.1 bug: FusedMoE binds ``self.capture`` in ``__init__`` only if the
capturer exists, but GPUModelRunner creates the capturer later, in
``initialize_kv_cache``, so no layer ever captures and
``enable_return_routed_experts=True`` returns zeros. This module wraps
``GPUModelRunner.init_routed_experts_capturer`` to bind every FusedMoE layer right
after the capturer exists (before CUDA graphs are captured).

Put this folder on PYTHONPATH: Python imports ``sitecustomize`` at start-up in
every process (engine core, TP/PP workers, DP ranks), and the wrap is installed
when vLLM's model runner module is first imported. The product patch does not
touch any of this; it only serves as an independent oracle for the route log.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

TARGET = "vllm.v1.worker.gpu_model_runner"


def bind_late(module) -> None:
    """Wrap ``module.GPUModelRunner.init_routed_experts_capturer`` (see above)."""
    runner_class = module.GPUModelRunner
    create = runner_class.init_routed_experts_capturer

    def create_and_bind(runner) -> None:
        from vllm.model_executor.layers.fused_moe.layer import FusedMoE
        from vllm.model_executor.layers.fused_moe.routed_experts_capturer import (
            RoutedExpertsCapturer,
        )

        create(runner)
        capturer = RoutedExpertsCapturer.get_instance()
        for layer in runner.get_model().modules():
            if isinstance(layer, FusedMoE):
                layer.capture = lambda ids, n=layer.layer_id: capturer.capture(n, ids)

    runner_class.init_routed_experts_capturer = create_and_bind


class _WrapOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module) -> None:
            load(module)
            bind_late(module)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Wrap the model runner now if it is loaded, else when it is imported."""
    if TARGET in sys.modules:
        bind_late(sys.modules[TARGET])
    elif not any(isinstance(f, _WrapOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _WrapOnImport())


install()
