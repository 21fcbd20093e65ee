"""The functions vLLM's own files call; everything else stays behind them.

- ``runner_created`` (``GPUModelRunner.__init__``, also the CPU runner's): keeps a
  weak reference to the runner, whose ``query_start_loc`` buffer gives in-graph
  counting each pass's real token count on the device.
- ``on_model_loaded`` (end of ``BaseModelLoader.load_model``): reads and checks
  the VLLM_LOG_MOE* variables, and in a process that logs, starts its session
  and gives each logged FusedMoE layer a ``moe_route_recorder``.
- ``warm_up_done`` (end of the GPU and CPU workers' ``compile_or_warm_up_model``):
  the dummy passes are over; in-graph counts forget what they counted.
- ``end_step`` (``GPUModelRunner.execute_model``, after the forward pass): hands
  the pass's real tokens and their requests to the session. The runner calls it
  only while ``ACTIVE``, so with logging off the cost is that one check.
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
import socket
import weakref

import numpy as np
import torch
from vllm.logger import init_logger

from .envs import LogConfig, LogConfigError, read_config
from .log_format import Ranks, RunFacts, header_fields
from .naming import rank_log_path

logger = init_logger(__name__)
ACTIVE = False  # this process records routes now (the runner calls end_step)
_session = None
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
    """The worker's warm-up (profile, compile, graph capture) is over: no dummy pass follows."""
    if _session is not None:
        _session.warm_up_done()


def on_model_loaded(model: torch.nn.Module, vllm_config) -> None:
    """Start route logging for ``model`` if VLLM_LOG_MOE asks for it."""
    global ACTIVE, _session
    from dataclasses import replace

    from vllm.distributed import get_tensor_model_parallel_rank
    from vllm.distributed.parallel_state import get_dp_group, get_ep_group, get_pp_group
    from vllm.model_executor.layers.fused_moe.layer import FusedMoE

    from . import routing
    from .recorder import LayerRecorder
    from .session import RouteLogSession

    close()  # a new engine in this process: the old log is done
    config = read_config()
    if config is None:
        return
    _check_supported(vllm_config)
    parallel = vllm_config.parallel_config
    num_layers = vllm_config.model_config.hf_text_config.num_hidden_layers
    moe_layers = {m.layer_id: m for m in model.modules() if isinstance(m, FusedMoE)}
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
    blocks = routing.moe_blocks(model)
    why = routing.unsupported(first_layer, on_cpu=vllm_config.device_config.device.type == "cpu")
    if why:
        raise UnsupportedSetupError(
            f"VLLM_LOG_MOE is set, but route logging does not support {why}"
        )
    model_config = vllm_config.model_config
    counts_path, n_real_source = _counts_path(config, vllm_config, dp_size)
    ep = parallel.enable_expert_parallel
    model_id = config.model_id or model_config.model
    run = RunFacts(
        vllm_version=_vllm_version(),
        model_id=model_id,
        seed=config.seed if config.seed is not None else model_config.seed,
        run_label=config.run_label,
        run_id=config.run_label or vllm_config.instance_id,
        layers=layers,
        layer_choice=layer_choice,
        num_layers=num_layers,
        moe_layers=sorted(moe_layers),
        num_experts=first_layer.logical_num_experts,
        top_k=first_layer.top_k,
        routing=routing.describe(first_layer, blocks.get(id(first_layer))),
        ranks=Ranks(
            dp=dp_rank,
            dp_size=dp_size,
            pp=pp_rank,
            pp_size=pp_size,
            tp_size=parallel.tensor_parallel_size,
            ep=get_ep_group().rank_in_group if ep else 0,
            ep_size=get_ep_group().world_size if ep else 1,
            eplb=parallel.enable_eplb,
        ),
        hostname=hostname,
        platform=vllm_config.device_config.device.type,
        enforce_eager=model_config.enforce_eager,
        prefix_caching=bool(vllm_config.cache_config.enable_prefix_caching),
        log_path=path,
        mode=config.mode,
        counts_path=counts_path,
        sample=config.sample,
    )
    session = RouteLogSession(
        replace(config, path=path),
        header_fields(run),
        rows=vllm_config.scheduler_config.max_num_batched_tokens,
        num_layers=len(layers),
        top_k=first_layer.top_k,
        num_experts=first_layer.logical_num_experts,
        device=vllm_config.device_config.device,
        n_real_source=n_real_source,
    )
    for slot, layer_id in enumerate(layers):
        layer = moe_layers[layer_id]
        scale = routing.weight_scale(layer, blocks.get(id(layer)))
        layer.moe_route_recorder = LayerRecorder(
            layer, session.buffers, slot, dp_rank, scale, session.counter
        )
    _register_compile_factor(layers, counts_path)
    atexit.register(session.close)
    multiprocessing.util.Finalize(None, session.close, exitpriority=100)
    _session, ACTIVE = session, session.recording


def rpc(command: str) -> dict | None:
    """Run a control ``command`` on this process's log; None where this process logs nothing."""
    global ACTIVE
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
    ACTIVE = _session.recording
    return {**_session.identity, **result}


def attach_server(app) -> None:
    """Give ``vllm serve``'s app the control endpoints and metrics, if VLLM_LOG_MOE is set."""
    if read_config() is None:
        return
    from .server import attach

    attach(app)


def close() -> None:
    """Flush and close this process's route log, if any (idempotent)."""
    global ACTIVE, _session
    if _session is not None:
        _session.close()
        _session, ACTIVE = None, False


def end_step(runner, tokens_per_req: np.ndarray) -> None:
    """Log the forward pass ``runner`` just ran: ``tokens_per_req`` per batch request."""
    if _session is None:
        return
    batch = runner.input_batch  # the session reads the pass's part of these buffers
    _session.end_step(
        batch.req_ids,
        tokens_per_req,
        batch.num_prompt_tokens,
        runner.positions.np,
        runner.input_ids.gpu,
    )


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
    runner = _runner() if _runner is not None else None
    why = None
    if config.mode != "counts":
        why = "it applies to counts mode only (routes mode stages routes at the end of a pass)"
    elif dp_size > 1:
        why = "data parallel: idle ranks run dummy passes that the graphs would count"
    elif runner is None or getattr(runner, "vllm_config", None) is not vllm_config:
        why = "no model runner of this engine was seen (only GPUModelRunner, V1, is supported)"
    elif runner.query_start_loc.gpu.device.type != vllm_config.device_config.device.type:
        why = "the runner's query_start_loc is not on the model's device"
    if why:
        logger.warning(
            "VLLM_LOG_MOE_COUNTS_IN_GRAPH=1 is not used: %s; the end-of-pass kernel counts", why
        )
        return END_OF_PASS, None
    # _prepare_inputs fills query_start_loc[num_reqs + 1:] with the pass's token count
    # and copies the whole buffer to the device before every real pass
    return IN_GRAPH, runner.query_start_loc.gpu


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
