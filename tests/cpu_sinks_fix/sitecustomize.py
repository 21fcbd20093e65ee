"""Tests only: let vLLM 0.15.1's CPU attention kernel run gpt-oss in float32.

The kernel (``torch.ops._C.cpu_attention_with_kv_cache``) reads the attention
sinks (``s_aux``) as bfloat16 whatever the model's dtype, so a float32 gpt-oss
fails at the first forward pass with "expected scalar type BFloat16 but found
Float". This hands the kernel its sinks in bfloat16; everything else, routing
included, stays float32, so the routes can be compared with transformers' float32
forward pass. Put this folder on PYTHONPATH: Python imports ``sitecustomize`` in
every process, the engine core included.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

TARGET = "vllm._custom_ops"


def _sinks_in_bfloat16(module) -> None:
    attention = module.cpu_attention_with_kv_cache

    def cpu_attention_with_kv_cache(*args, s_aux=None, **kwargs):
        import torch

        if s_aux is not None:
            s_aux = s_aux.to(torch.bfloat16)
        return attention(*args, s_aux=s_aux, **kwargs)

    module.cpu_attention_with_kv_cache = cpu_attention_with_kv_cache


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
            _sinks_in_bfloat16(module)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _WrapOnImport())
