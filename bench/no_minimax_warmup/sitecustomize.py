"""Bench-only shim for the 0.34.0 GPU bundle: skip MiniMax-M3's kernel warm-up.

vLLM 0.34.0's kernel warm-up imports MiniMax-M3's MSA kernels on every CUDA engine
(``model_executor/warmup/kernel_warmup.py:366-371``), and their module imports the CuTe
DSL (``nvidia-cutlass-dsl``), which the bundle leaves out (tools/gpu_bundle); no model
run here uses those kernels. A no-op stand-in for that one warm-up module, installed
in every process that has this folder on its PYTHONPATH, lets every other warm-up run.
"""

import sys
import types

_NAME = "vllm.model_executor.warmup.minimax_m3_msa_warmup"
_module = types.ModuleType(_NAME)
_module.minimax_m3_msa_warmup = lambda worker: None
sys.modules[_NAME] = _module
