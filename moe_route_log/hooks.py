"""The functions vLLM calls; everything else stays behind them.

Two callers reach them: the patch's insertions in vLLM 0.15.1's files
(``moe_profiler/patching.py``), and the pip-installed plugin's wrappers
(``adapters/engine_hooks.py``), in any release from 0.15.1 on.

- ``runner_created`` (the model runner's ``__init__``): keeps a weak reference to
  the runner, whose ``query_start_loc`` gives in-graph counting each pass's real
  token count on the device.
- ``on_model_loaded`` (end of ``BaseModelLoader.load_model``): reads and checks
  the VLLM_LOG_MOE* variables, and in a process that logs, starts its session
  and gives each logged MoE layer a ``moe_route_recorder`` (the plugin also hands
  it a tap that makes the layer call it: ``adapters/routing_taps.py``).
- ``warm_up_done`` (end of the workers' ``compile_or_warm_up_model``): the dummy and
  warm-up passes are over; from now on passes are recorded, and in-graph counts
  forget what warm-up counted.
- ``end_step`` (patch: inside Model Runner V1's ``execute_model``) and ``end_pass``
  (plugin: after either runner's ``execute_model``): hand the pass's real tokens
  and their requests to the session. They are called only while ``ACTIVE``, so
  with logging off the cost is that one check.
- ``close`` (``Worker.shutdown``): flushes the log and writes its trailer when the
  engine shuts down, also when it runs inside the caller's process. A process
  that exits without shutting its engine down is covered by atexit/finalizers.
- ``rpc`` (``Worker.moe_route_log_rpc``, reached through vLLM's ``collective_rpc``):
  the run-time controls start / stop / dump / status / totals (``control.py``).
- ``attach_server`` (end of ``register_vllm_serve_api_routers``): with VLLM_LOG_MOE
  set, ``vllm serve`` gets the control endpoints and expert-load metrics
  (``server.py``).
"""

from __future__ import annotations

import atexit
import multiprocessing.util
import os
import socket
import time
import weakref

import numpy as np
import torch

from .envs import LogConfig, LogConfigError, read_config
from .log_format import WEIGHT_DECIMALS
from .naming import model_display_name, rank_log_path
from .vllm_logging import get_logger

logger = get_logger(__name__)
ACTIVE = False  # this process records routes now (the runner calls end_step)
_session = None
_warmed_up = False  # the worker's warm-up is over: passes from now on are real ones
_runner: weakref.ref | None = None  # the last model runner built in this process
IN_GRAPH, END_OF_PASS = "in_graph", "end_of_pass"  # the header's counts_path
_COMPILE_FACTOR = "VLLM_LOG_MOE (route recorder traced into the compiled graph)"


class UnsupportedSetupError(LogConfigError):
    """VLLM_LOG_MOE is set on an engine setup whose routes it cannot attribute."""


def runner_created(runner) -> None:
    """Remember ``runner`` (weakly): the model it loads next may count in the graph."""
    global _runner
    _runner = weakref.ref(runner)


def warm_up_done() -> None:
    """The worker's warm-up (profile, compile, graph capture, kernel warm-up) is over:
    passes from now on serve requests. Releases from 0.32 on warm kernels up with
    hand-built batches through ``execute_model`` itself (``v1/worker/gpu/warmup.py``),
    so until this call no pass is recorded."""
    global _warmed_up
    _warmed_up = True
    if _session is not None:
        _session.warm_up_done()
    _refresh_active()


def _refresh_active() -> None:
    global ACTIVE
    ACTIVE = _session is not None and _warmed_up and _session.recording


def on_model_loaded(
    model: torch.nn.Module, vllm_config, model_config=None, install_tap=None
) -> None:
    """Start route logging for ``model`` if VLLM_LOG_MOE asks for it.

    ``model_config``: the loader's (a draft model's differs from the engine's, and
    its layers are never logged); ``install_tap(layer, recorder)``: the plugin's way
    of making a logged layer call its recorder (the patch's insertions need none).
    """
    global _session, _warmed_up
    from dataclasses import replace

    from vllm.distributed import get_tensor_model_parallel_rank
    from vllm.distributed.parallel_state import get_dp_group, get_ep_group, get_pp_group

    from . import routing
    from .adapters import moe_layers as layer_views
    from .recorder import LayerRecorder
    from .session import RouteLogSession

    if model_config is not None and model_config is not vllm_config.model_config:
        return  # a draft (MTP, EAGLE) model: its routes are not the served model's
    close()  # a new engine in this process: the old log is done
    _warmed_up = False
    config = read_config()
    if config is None:
        return
    _check_supported(vllm_config)
    parallel = vllm_config.parallel_config
    num_layers = vllm_config.model_config.hf_text_config.num_hidden_layers
    moe_layers = layer_views.find(model)
    pp_rank, pp_size = get_pp_group().rank_in_group, parallel.pipeline_parallel_size
    all_moe_layers = _model_moe_layers(sorted(moe_layers), pp_size)
    _check_has_moe_layers(all_moe_layers, vllm_config)
    chosen, layer_choice = config.choose_layers(num_layers, all_moe_layers)
    layers = [i for i in chosen if i in moe_layers]  # this pipeline stage's share
    if get_tensor_model_parallel_rank() != 0 or not layers:
        return  # tensor-parallel peers route the same tokens: rank 0 logs them
    dp_rank, dp_size = get_dp_group().rank_in_group, parallel.data_parallel_size
    hostname = socket.gethostname()
    path = rank_log_path(config.path, dp_rank, dp_size, pp_rank, pp_size, hostname)
    first_layer = moe_layers[layers[0]]
    blocks = routing.moe_blocks(model, moe_layers.values())
    why = routing.unsupported(first_layer, on_cpu=vllm_config.device_config.device.type == "cpu")
    if why:
        raise UnsupportedSetupError(
            f"VLLM_LOG_MOE is set, but route logging does not support {why}"
        )
    if install_tap is not None:
        from .adapters import routing_taps

        try:
            for layer_id in layers:
                routing_taps.check(moe_layers[layer_id])
        except routing_taps.UnsupportedLayerError as e:
            raise UnsupportedSetupError(
                f"VLLM_LOG_MOE is set, but the plugin does not support {e}"
            ) from None
    model_config = vllm_config.model_config
    counts_path, n_real_source = _counts_path(config, vllm_config, dp_size)
    ep = parallel.enable_expert_parallel
    model_id = config.model_id or model_config.model
    meta = {
        "vllm_version": _vllm_version(),
        "model_id": model_id,
        "model_name": model_display_name(model_id),
        "seed": config.seed if config.seed is not None else model_config.seed,
        "req_id": config.run_label,
        "run_id": config.run_label or vllm_config.instance_id,
        "layers": layers,
        "layer_choice": layer_choice,
        "num_layers": num_layers,
        "moe_layers": sorted(moe_layers),
        "num_experts": first_layer.num_experts,
        "top_k": first_layer.top_k,
        "routing": routing.describe(first_layer, blocks.get(id(first_layer.module))),
        "expert_ids": "logical",
        "weights_decimals": WEIGHT_DECIMALS,
        "ranks": {
            "dp": dp_rank,
            "dp_size": dp_size,
            "pp": pp_rank,
            "pp_size": pp_size,
            "tp": 0,
            "tp_size": parallel.tensor_parallel_size,
            "ep": get_ep_group().rank_in_group if ep else 0,
            "ep_size": get_ep_group().world_size if ep else 1,
            "eplb": parallel.enable_eplb,
        },
        "hostname": hostname,
        "pid": os.getpid(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "platform": vllm_config.device_config.device.type,
        "enforce_eager": model_config.enforce_eager,
        "prefix_caching": bool(vllm_config.cache_config.enable_prefix_caching),
        "log_path": path,
        "mode": config.mode,
        "counts_path": counts_path,
        "sample": config.sample,
    }
    session = RouteLogSession(
        replace(config, path=path),
        meta,
        rows=vllm_config.scheduler_config.max_num_batched_tokens,
        num_layers=len(layers),
        top_k=first_layer.top_k,
        num_experts=first_layer.num_experts,
        device=vllm_config.device_config.device,
        n_real_source=n_real_source,
    )
    for slot, layer_id in enumerate(layers):
        layer = moe_layers[layer_id]
        scale = routing.weight_scale(layer, blocks.get(id(layer.module)))
        recorder = LayerRecorder(layer, session.buffers, slot, dp_rank, scale, session.counter)
        layer.module.moe_route_recorder = recorder  # the patch's insertions call it
        if install_tap is not None:
            install_tap(layer, recorder)
    _register_compile_factor(layers, counts_path)
    atexit.register(session.close)
    multiprocessing.util.Finalize(None, session.close, exitpriority=100)
    _session = session
    _refresh_active()


def rpc(command: str) -> dict | None:
    """Run a control ``command`` on this process's log; None where this process logs nothing."""
    if _session is None:
        return None
    commands = {
        "start": _session.start,
        "stop": _session.stop,
        "dump": _session.dump,
        "status": _session.status,
        "totals": _session.totals,
    }
    if command not in commands:
        raise ValueError(f"moe_route_log: unknown command {command!r}; known: {sorted(commands)}")
    result = commands[command]()
    _refresh_active()
    return {**_session.identity, **result}


def attach_server(app) -> None:
    """Give ``vllm serve``'s app the control endpoints and metrics, if VLLM_LOG_MOE is set."""
    if read_config() is None:
        return
    from .server import attach

    attach(app)


def close() -> None:
    """Flush and close this process's route log, if any (idempotent)."""
    global _session
    if _session is not None:
        _session.close()
        _session = None
    _refresh_active()


def end_step(runner, tokens_per_req: np.ndarray) -> None:
    """Log the forward pass a Model Runner V1 just ran: ``tokens_per_req`` per batch
    request (the patch calls this inside ``execute_model``)."""
    if _session is None:
        return
    from .adapters import passes

    end_pass(passes.v1_pass(runner, tokens_per_req))


def end_pass(pass_) -> None:
    """Log the forward pass ``pass_`` (``adapters.passes.Pass``) that just ran."""
    if _session is None:
        return
    began = time.perf_counter()
    # routes mode queues these for the drain thread: copies, as the runner reuses its
    # buffers; counts mode only sums them now, and needs no request ids
    queued = _session.mode == "routes"
    keep = np.copy if queued else np.asarray
    _session.end_step(
        pass_.req_ids if queued else [],
        keep(pass_.tokens_per_req),
        keep(pass_.prompt_lens),
        pass_.positions,
        pass_.input_ids,
    )
    _session.end_step_s += time.perf_counter() - began


def _check_supported(vllm_config) -> None:
    parallel = vllm_config.parallel_config
    unsupported = {
        "speculative decoding (draft tokens would be logged as if accepted)": (
            vllm_config.speculative_config is not None
        ),
        "sequence-parallel MoE (tensor and data parallel with expert parallel)": (
            parallel.use_sequence_parallel_moe
        ),
        "prefill context parallelism": parallel.prefill_context_parallel_size > 1,
        "decode context parallelism": getattr(parallel, "decode_context_parallel_size", 1) > 1,
        "dual-batch overlap (micro-batching)": parallel.use_ubatching,
    }
    for what, used in unsupported.items():
        if used:
            raise UnsupportedSetupError(
                f"VLLM_LOG_MOE is set, but route logging does not support {what}; "
                "unset VLLM_LOG_MOE or turn that feature off"
            )


def _counts_path(config: LogConfig, vllm_config, dp_size: int) -> tuple[str, torch.Tensor | None]:
    """Where counts are made, and for ``IN_GRAPH`` the device tensor whose last element
    is each pass's real token count (the runner's ``query_start_loc``)."""
    if not config.counts_in_graph:
        return END_OF_PASS, None
    from .adapters import passes

    runner = _runner() if _runner is not None else None
    source = passes.token_count_source(runner) if runner is not None else None
    why = None
    if config.mode != "counts":
        why = "it applies to counts mode only (routes mode stages routes at the end of a pass)"
    elif dp_size > 1:
        why = "data parallel: idle ranks run dummy passes that the graphs would count"
    elif source is None or getattr(runner, "vllm_config", None) is not vllm_config:
        why = "no model runner of this engine was seen (Model Runner V1 or V2)"
    elif source.device.type != vllm_config.device_config.device.type:
        why = "the runner's query_start_loc is not on the model's device"
    if why:
        logger.warning(
            "VLLM_LOG_MOE_COUNTS_IN_GRAPH=1 is not used: %s; the end-of-pass kernel counts", why
        )
        return END_OF_PASS, None
    # both runners fill query_start_loc[num_reqs + 1:] with the pass's token count and
    # copy the whole buffer to the device before every real pass (adapters/passes.py)
    return IN_GRAPH, source


def _register_compile_factor(layers: list[int], counts_path: str) -> None:
    """Keep torch.compile caches of logged and unlogged runs apart where it matters.

    On CPU and TPU, Dynamo traces FusedMoE.forward_impl itself, so the recorder
    is part of the compiled graph; vLLM keys its compile cache on its env vars.
    """
    from vllm import envs as vllm_envs
    from vllm.platforms import current_platform

    if current_platform.is_cpu() or current_platform.is_tpu():
        factor = f"layers={layers} counts_path={counts_path}"
        vllm_envs.environment_variables[_COMPILE_FACTOR] = lambda: factor


def _model_moe_layers(stage_moe_layers: list[int], pp_size: int) -> list[int]:
    """Every MoE layer of the model: this stage's, joined with the other pipeline stages'."""
    if pp_size == 1:
        return stage_moe_layers
    import torch.distributed as dist
    from vllm.distributed.parallel_state import get_pp_group

    stages: list[list[int] | None] = [None] * pp_size
    dist.all_gather_object(stages, stage_moe_layers, group=get_pp_group().cpu_group)
    return sorted({i for stage in stages for i in stage or []})


def _check_has_moe_layers(moe_layers: list[int], vllm_config) -> None:
    if not moe_layers:
        architectures = vllm_config.model_config.architectures
        raise UnsupportedSetupError(
            f"VLLM_LOG_MOE is set, but this model ({', '.join(architectures)}) has no "
            "FusedMoE layer: route logging reads vLLM's FusedMoE layers only (models that "
            "call fused_experts directly, e.g. Arctic and MiniCPM-MoE, are not covered); "
            "unset VLLM_LOG_MOE"
        )


def _vllm_version() -> str:
    import vllm

    return vllm.__version__
