"""The plugin's twin of the patch's insertions: the same hooks, reached by wrapping vLLM.

The patch edits six files of vLLM 0.15.1 (``moe_profiler/patching.py``,
``INSERTIONS``); the plugin wraps the same methods, each once its module is imported
(``when_imported``), in every release from 0.15.1 on:

- ``on_model_loaded``: ``BaseModelLoader.load_model``,
  ``model_executor/model_loader/base_loader.py`` (0.15.1: l. 38; 0.32.0: 63; 0.34.0: 76);
- ``runner_created`` and ``end_pass``: ``GPUModelRunner.__init__`` and
  ``execute_model`` of Model Runner V1, ``v1/worker/gpu_model_runner.py``
  (``execute_model`` 0.15.1: 3274; 0.32.0: 3940), and of V2,
  ``v1/worker/gpu/model_runner.py`` (0.34.0: 207 and 1826);
- ``warm_up_done``: ``compile_or_warm_up_model`` of ``Worker``,
  ``v1/worker/gpu_worker.py`` (414; 908; 1017), and of ``CPUWorker``,
  ``v1/worker/cpu_worker.py`` (120; 264; 259);
- ``close``: ``Worker.shutdown``, ``v1/worker/gpu_worker.py`` (928; 1606; 1792);
- ``rpc``: ``WorkerBase.moe_route_log_rpc``, added to ``v1/worker/worker_base.py``'s
  class: ``collective_rpc`` finds a worker's methods by name;
- ``attach_server``: ``register_vllm_serve_api_routers``,
  ``entrypoints/serve/__init__.py`` (12; 19; 19), which ``build_app`` imports when
  it runs.

The CPU runners subclass the GPU ones (``cpu_model_runner.py``, ``cpu/model_runner.py``)
and inherit the wrapped methods. A pass that did not run the model (no tokens
scheduled, or a V2 dummy pass) is not handed on.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from types import ModuleType

from . import passes
from .when_imported import when_imported

_WRAPPED = "__moe_route_log_wrapped__"


def install() -> None:
    """Wrap, in this process, each vLLM method the logger hooks into, once imported."""
    when_imported("vllm.model_executor.model_loader.base_loader", _loader)
    when_imported("vllm.v1.worker.gpu_model_runner", _runner_v1)
    when_imported("vllm.v1.worker.gpu.model_runner", _runner_v2)
    when_imported("vllm.v1.worker.worker_base", _worker_base)
    when_imported("vllm.v1.worker.gpu_worker", _workers)
    when_imported("vllm.v1.worker.cpu_worker", _workers)
    when_imported("vllm.entrypoints.serve", _serve)


def _wrap(cls_or_module, name: str, make: Callable[[Callable], Callable]) -> None:
    """Replace ``cls_or_module.name`` by ``make(original)``, once, if it is defined there."""
    original = vars(cls_or_module).get(name)
    if original is None or getattr(original, _WRAPPED, False):
        return
    wrapped = functools.wraps(original)(make(original))
    setattr(wrapped, _WRAPPED, True)
    setattr(cls_or_module, name, wrapped)


def _loader(module: ModuleType) -> None:
    def make(load_model):
        signature = inspect.signature(load_model)

        def wrapper(self, *args, **kwargs):
            model = load_model(self, *args, **kwargs)
            from .. import hooks
            from .routing_taps import install as install_tap

            given = signature.bind(self, *args, **kwargs).arguments
            hooks.on_model_loaded(
                model, given["vllm_config"], given.get("model_config"), install_tap=install_tap
            )
            return model

        return wrapper

    _wrap(module.BaseModelLoader, "load_model", make)


def _runner_created(init):
    def wrapper(self, *args, **kwargs):
        init(self, *args, **kwargs)
        from .. import hooks

        hooks.runner_created(self)

    return wrapper


def _refuse_runner(init):
    def wrapper(self, *args, **kwargs):
        from ..hooks import UnsupportedSetupError

        raise UnsupportedSetupError(
            "VLLM_LOG_MOE is set, but the plugin does not support this vLLM's experimental "
            "Model Runner V2 (VLLM_USE_V2_MODEL_RUNNER=1): unset that variable, or "
            "VLLM_LOG_MOE"
        )

    return wrapper


def _runner_v1(module: ModuleType) -> None:
    def make(execute_model):
        def wrapper(self, scheduler_output, *args, **kwargs):
            output = execute_model(self, scheduler_output, *args, **kwargs)
            from .. import hooks

            if hooks.ACTIVE and scheduler_output.total_num_scheduled_tokens:
                hooks.end_pass(passes.v1_pass(self))
            return output

        return wrapper

    _wrap(module.GPUModelRunner, "__init__", _runner_created)
    _wrap(module.GPUModelRunner, "execute_model", make)


def _runner_v2(module: ModuleType) -> None:
    if not passes.v2_readable(module.InputBatch):
        # 0.15.1's experimental V2 (VLLM_USE_V2_MODEL_RUNNER=1) keeps other per-pass state
        # (a tuple, model_runner.py:915; no computed tokens per request): refused when built
        _wrap(module.GPUModelRunner, "__init__", _refuse_runner)
        return

    def make(execute_model):
        # where dummy_run stands among the arguments after self and scheduler_output
        dummy = list(inspect.signature(execute_model).parameters).index("dummy_run") - 2

        def wrapper(self, scheduler_output, *args, **kwargs):
            before = self.execute_model_state
            output = execute_model(self, scheduler_output, *args, **kwargs)
            from .. import hooks

            dummy_run = kwargs.get("dummy_run", len(args) > dummy and args[dummy])
            state = self.execute_model_state
            if hooks.ACTIVE and not dummy_run and state is not None and state is not before:
                hooks.end_pass(passes.v2_pass(self))
            return output

        return wrapper

    _wrap(module.GPUModelRunner, "__init__", _runner_created)
    _wrap(module.GPUModelRunner, "execute_model", make)


def _worker_base(module: ModuleType) -> None:
    def moe_route_log_rpc(self, command: str):
        """Route-log control through collective_rpc (moe_route_log/control.py)."""
        from .. import hooks

        return hooks.rpc(command)

    if not hasattr(module.WorkerBase, "moe_route_log_rpc"):
        module.WorkerBase.moe_route_log_rpc = moe_route_log_rpc


def _workers(module: ModuleType) -> None:
    def warm_up(compile_or_warm_up_model):
        def wrapper(self, *args, **kwargs):
            result = compile_or_warm_up_model(self, *args, **kwargs)
            from .. import hooks

            hooks.warm_up_done()
            return result

        return wrapper

    def shutdown(original):
        def wrapper(self, *args, **kwargs):
            from .. import hooks

            if hooks is not None:  # None during interpreter shutdown
                hooks.close()  # flush the route log and write its trailer
            return original(self, *args, **kwargs)

        return wrapper

    for cls in (getattr(module, "Worker", None), getattr(module, "CPUWorker", None)):
        if cls is not None and cls.__module__ == module.__name__:
            _wrap(cls, "compile_or_warm_up_model", warm_up)
            _wrap(cls, "shutdown", shutdown)


def _serve(module: ModuleType) -> None:
    def make(register):
        def wrapper(app, *args, **kwargs):
            result = register(app, *args, **kwargs)
            from .. import hooks

            hooks.attach_server(app)  # only with VLLM_LOG_MOE set
            return result

        return wrapper

    _wrap(module, "register_vllm_serve_api_routers", make)
