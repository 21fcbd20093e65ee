"""The vLLM plugin: ``pip install`` this project and VLLM_LOG_MOE works in any vLLM process.

vLLM loads every ``vllm.general_plugins`` entry point once in each of its processes
(API server: ``EngineArgs.__post_init__``; engine core: ``EngineCore.__init__``;
workers: ``WorkerWrapperBase.init_worker``, before the worker class is built).
``register`` is that entry point (pyproject.toml). With VLLM_LOG_MOE unset it returns
at once, importing nothing; set, it asks to wrap vLLM's loader, model runners,
workers and HTTP router registration as each process imports them
(``adapters/engine_hooks.py``). Bad settings are refused later, at engine start,
exactly as with the patch.

A vLLM patched by ``apply_hook.py`` carries its own copy of this package; the
plugin then steps aside, so a run is logged once, by the patch.
"""

from __future__ import annotations

import os

PATCHED_PACKAGE = ("model_executor", "layers", "fused_moe", "moe_route_log", "__init__.py")


def register() -> None:
    """vLLM's entry point: install the logger's hooks in this process if VLLM_LOG_MOE is set."""
    if not os.environ.get("VLLM_LOG_MOE"):
        return
    if vllm_is_patched():
        return
    from .adapters import engine_hooks

    declare_variables()
    engine_hooks.install()


def declare_variables() -> None:
    """Tell vLLM the VLLM_LOG_MOE* variables are known: vLLM 0.2x+ warns about unknown
    VLLM_* variables (``platforms/interface.py`` ``validate_environ``) and refuses them
    with ``--fail-on-environ-validation``. Their getters return None, a constant in vLLM's
    torch.compile cache key (``envs.compile_factors``), so a log path never forces a
    recompile; what the logger traces into the graph is keyed by
    ``hooks._register_compile_factor`` instead."""
    from vllm import envs as vllm_envs

    from .envs import ENV_VARS

    for name in ENV_VARS:
        vllm_envs.environment_variables.setdefault(name, lambda: None)


def vllm_is_patched() -> bool:
    """Does the installed vLLM carry the patch's copy of the logger? (found without importing
    vLLM, which is what loads this plugin)"""
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    folders = spec.submodule_search_locations if spec is not None else None
    return any(os.path.exists(os.path.join(f, *PATCHED_PACKAGE)) for f in folders or [])
