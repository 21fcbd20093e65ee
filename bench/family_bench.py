#!/usr/bin/env python3
"""Every MoE family on one GPU: the route log against vLLM's capture and each family's rule.

  family_bench.py run --out DIR [--families a,b,...]   all families: waves of engines side by side
  family_bench.py engine NAME --out DIR                one family in this process (what run starts)
  family_bench.py table DIR                            the README's coverage rows (markdown)

Per family one vLLM engine (in-process; torch.compile and CUDA graphs on; dummy
weights; the family's real config.json from bench/configs, with fewer decoder
layers where PLAN says so) logs every MoE layer of --n GSM8K prompts x --tokens
tokens, prefix caching off, and is checked three ways (DIR/NAME.json):
- lines: exactly one route line per (request, position, MoE layer) of every token;
- capture: logged ids == vLLM's own enable_return_routed_experts (made to work by
  bench/capture_fix), as sets; a monolithic kernel routes where the capture never
  looks, so it returns zeros there, and that is reported instead;
- rule: logged ids and weights == moe_profiler/verification/routing_rules.py applied to the
  router logits the layer routed on (kept by a tap on the recorder's call),
  written from the model's definition, independent of vLLM's routing code,
  its scores rounded to the dtype vLLM's router kernel scores in (score_precision:
  bfloat16 for DeepSeek-style grouped top-k on CUDA), exact ties counted apart.
Dummy weights give router logits of ~1e-5, whose bfloat16 scores are all equal;
each router's weights are scaled so that its logits have a spread of about 1
(realistic_router_logits), as a trained router's do.
Engines of one wave share the card (a fixed 2 GiB KV cache each, so that their
memory profiling cannot disturb each other); a family that fails or hangs gets
its error in its JSON, and the others go on. Run on the GPU host with the
bundle's vLLM patched (apply_hook.py); MLA models use TRITON_MLA (the bundle has
no FlashMLA and no FlashInfer).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

CONFIGS = REPO / "bench" / "configs"
# On the GPU host the GSM8K file travels in .gpu/ (as for gpu_bench.py); here it is in shared/
DEFAULT_GSM8K = next(
    (
        p
        for p in (REPO / ".gpu" / "gsm8k-test.jsonl", REPO.parent / "shared/data/gsm8k/test.jsonl")
        if p.exists()
    ),
    REPO / ".gpu" / "gsm8k-test.jsonl",
)


@dataclass(frozen=True)
class FamilyRun:
    """How one family runs: its config, the layers kept, quantization, attention, wave."""

    config: str  # file in bench/configs
    layers: int | None  # num_hidden_layers run (None: the config's own)
    wave: int  # engines of one wave run side by side
    quantization: str | None = None  # LLM(quantization=...): online FP8 ("fp8")
    attention_backend: str | None = None
    note: str = ""
    # vLLM's capture can read this family's kernel (0.34.0 refuses monolithic kernels at
    # engine start: routed_experts_capturer.py:234; 0.15.1 returned zeros for them)
    capture: bool = True


# Memory (H200, 141 GB): wave 1 ~75 GB of weights at rest (Llama 4's online FP8
# holds its bfloat16 experts, 32 GB, until quantised), wave 2 ~55 GB; each engine
# adds its 2 GiB KV cache, CUDA graphs and activations.
PLAN: dict[str, FamilyRun] = {
    "deepseek_v3": FamilyRun(
        "deepseek-v3.json",
        4,
        1,
        attention_backend="TRITON_MLA",
        note="3 dense + 1 MoE layer; block FP8 weights, as the checkpoint",
    ),
    "kimi_k2": FamilyRun(
        "kimi-k2-instruct.json",
        2,
        1,
        attention_backend="TRITON_MLA",
        note="1 dense + 1 MoE layer (384 experts: 17 GB in FP8); block FP8 weights",
    ),
    "glm4_moe": FamilyRun("glm-4.5.json", 4, 1, note="3 dense + 1 MoE layer"),
    "llama4": FamilyRun(
        "llama-4-maverick-17b-128e-text.json",
        2,
        1,
        quantization="fp8",
        note="1 dense + 1 MoE layer (128 experts: 32 GB in bf16); online FP8",
    ),
    "mixtral": FamilyRun("mixtral-8x7b-instruct-v0.1.json", 4, 2),
    "qwen3_moe": FamilyRun("qwen3-30b-a3b.json", 8, 2, quantization="fp8", note="online FP8"),
    "olmoe": FamilyRun("olmoe-1b-7b-0924.json", None, 2),
    "qwen2_moe": FamilyRun(
        "qwen1.5-moe-a2.7b-chat.json", None, 3, note="Qwen1.5-MoE-A2.7B, all 24 layers"
    ),
    "deepseek_v2_lite": FamilyRun(
        "deepseek-v2-lite.json",
        8,
        2,
        attention_backend="TRITON_MLA",
        note="1 dense + 7 MoE layers",
    ),
    "gpt_oss": FamilyRun(
        "gpt-oss-20b.json",
        None,
        2,
        note="MXFP4 experts, as the checkpoint (monolithic kernel: checked by the rule only)",
        capture=False,
    ),
}


def model_config(run: FamilyRun) -> dict:
    """The family's config.json with ``run.layers`` decoder layers (nothing else changed)."""
    config = json.loads((CONFIGS / run.config).read_text())
    if run.layers is not None:
        config["num_hidden_layers"] = run.layers
        if "layer_types" in config:
            config["layer_types"] = config["layer_types"][: run.layers]
    return config


def moe_layers(config: dict) -> list[int]:
    """The MoE layers a config declares (how each family's model file decides)."""
    n = config["num_hidden_layers"]
    if "first_k_dense_replace" in config:  # DeepSeek, Kimi, GLM-4.5
        freq = config.get("moe_layer_freq", 1)
        return [i for i in range(n) if i >= config["first_k_dense_replace"] and i % freq == 0]
    if "interleave_moe_layer_step" in config:  # Llama 4
        step = config["interleave_moe_layer_step"]
        return [i for i in range(n) if step > 0 and (i + 1) % step == 0]
    if "decoder_sparse_step" in config:  # Qwen2/3-MoE
        dense = set(config.get("mlp_only_layers") or [])
        step = config["decoder_sparse_step"]
        return [i for i in range(n) if i not in dense and (i + 1) % step == 0]
    return list(range(n))  # Mixtral, OLMoE, gpt-oss: every layer


def waves(families: list[str]) -> list[list[str]]:
    """``families`` grouped by PLAN wave, in wave order."""
    numbers = sorted({PLAN[f].wave for f in families})
    return [[f for f in families if PLAN[f].wave == w] for w in numbers]


# ---------------------------------------------------------------- one engine


class LogitsTap:
    """Keeps the router logits each logged FusedMoE layer routes on, pass by pass.

    It wraps the logger's own call sites: the recorder's ``record`` (where the
    layer's router logits are at hand, also for monolithic kernels) copies them
    into a static buffer (captured in CUDA graphs like the recorder's copies), and
    ``end_step`` reads the pass's real rows back with its requests and positions.
    """

    def __init__(self) -> None:
        self.buffers: dict[int, object] = {}
        self.biases: dict[int, object] = {}
        self.steps: list = []
        self.layers: dict[int, object] = {}  # layer id -> the FusedMoE layer
        self.logits_dtypes: dict[int, object] = {}  # layer id -> its router logits' dtype
        self.on_cpu = False

    def score_precision(self) -> str:
        """The dtype vLLM's router scores the logged layers' logits in (routing_rules)."""
        layer_id = min(self.layers, default=None)
        if layer_id is None:
            return "float64"
        return score_precision(
            self.layers[layer_id], self.logits_dtypes.get(layer_id), on_cpu=self.on_cpu
        )

    def install(self) -> None:
        import torch

        from moe_profiler.verification.family_check import TapStep

        hooks, recorder = logger_modules()
        loaded, record, end_pass = (
            hooks.on_model_loaded,
            recorder.LayerRecorder.record,
            hooks.end_pass,
        )
        tap = self

        def on_model_loaded(model, vllm_config, *args, **kwargs) -> None:
            loaded(model, vllm_config, *args, **kwargs)
            rows = vllm_config.scheduler_config.max_num_batched_tokens
            tap.on_cpu = vllm_config.device_config.device.type == "cpu"
            for module in model.modules():
                rec = getattr(module, "moe_route_recorder", None)
                if rec is None:
                    continue
                layer = rec.layer  # adapters.moe_layers.MoELayer
                tap.layers[layer.layer_id] = layer
                tap.buffers[layer.layer_id] = torch.zeros(
                    rows,
                    layer.num_experts,
                    dtype=torch.float32,
                    device=vllm_config.device_config.device,
                )
                bias = layer.settings.e_score_correction_bias
                tap.biases[layer.layer_id] = (
                    None if bias is None else bias.detach().float().cpu().numpy()
                )

        def tapped_record(rec, hidden_states, router_logits, *args, **kwargs):
            buffer = tap.buffers.get(rec.layer.layer_id)
            if not torch.compiler.is_compiling():  # CUDA: in the MoE custom op, eager
                tap.logits_dtypes.setdefault(rec.layer.layer_id, router_logits.dtype)
            if buffer is not None:
                n = min(router_logits.shape[0], buffer.shape[0])
                buffer[:n].copy_(router_logits[:n])
            return record(rec, hidden_states, router_logits, *args, **kwargs)

        def tapped_end_pass(pass_) -> None:  # both the patch's end_step and the plugin's
            end_pass(pass_)
            rows = int(pass_.tokens_per_req.sum())
            tap.steps.append(
                TapStep(
                    list(pass_.req_ids),
                    np.copy(pass_.tokens_per_req),
                    np.copy(pass_.positions),
                    {layer: b[:rows].cpu().numpy().copy() for layer, b in tap.buffers.items()},
                )
            )

        import numpy as np

        hooks.on_model_loaded = on_model_loaded
        recorder.LayerRecorder.record = tapped_record
        hooks.end_pass = tapped_end_pass


def logger_modules():
    """The logger's hooks and recorder modules as this vLLM runs them: the patch's copy
    inside vLLM 0.15.1, or the pip-installed plugin's package."""
    from moe_route_log import plugin

    if plugin.vllm_is_patched():
        from vllm.model_executor.layers.fused_moe.moe_route_log import hooks, recorder
    else:
        from moe_route_log import hooks, recorder
    return hooks, recorder


def score_precision(layer, logits_dtype, on_cpu: bool) -> str:
    """The dtype in which vLLM 0.15.1 computes ``layer``'s routing scores.

    CUDA, GroupedTopKRouter with valid groups (DeepSeek V2/V3, Kimi K2, GLM-4.5):
    ``grouped_topk`` softmaxes in the logits' dtype (bfloat16 in, bfloat16 out), and
    the fused ``ops.grouped_topk`` kernel (sigmoid + correction bias) keeps sigmoid,
    score + bias and group sums in it too; GLM-4.5's gate makes float32 logits.
    Other CUDA routers (topk_softmax, fused_topk_bias) and the CPU kernels
    (cpu_fused_moe: ``gating_output.float()``) score in float32.
    """
    if on_cpu:
        return "float32"
    router = getattr(layer, "router", None)
    if type(router).__name__ == "GroupedTopKRouter":
        groups, experts = router.num_expert_group, layer.num_experts
        if experts > groups and experts % groups == 0:
            names = {"torch.bfloat16": "bfloat16", "torch.float16": "float16"}
            return names.get(str(logits_dtype), "float32")
    return "float32"


def realistic_router_logits(std: float = 1.0) -> None:
    """Scale each router of a dummy-loaded model so its logits spread about ``std``.

    Dummy loading draws every weight from U(-1e-3, 1e-3), RMSNorm weights too, so a
    router's input has an RMS of ~6e-4 and its logits are ~1e-5: bfloat16 scores of
    such logits (softmax ~1/E, sigmoid ~0.5) are all one value, and vLLM's grouped
    top-k then routes by expert index. The router input is the decoder layer's
    ``post_attention_layernorm`` output, RMS ~ RMS(norm weight) per element, so
    logits have a std of sqrt(hidden) * RMS(norm weight) * std(router weight).
    """
    import torch
    from vllm.model_executor.model_loader.dummy_loader import DummyModelLoader

    load = DummyModelLoader.load_weights

    def load_weights(self, model, model_config) -> None:
        load(self, model, model_config)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, weight in params.items():
                parts = name.split(".")
                if parts[-1] != "weight" or parts[-2] not in ("gate", "router"):
                    continue
                if weight.dim() != 2 or not weight.is_floating_point() or "layers" not in parts:
                    continue
                layer_prefix = ".".join(parts[: parts.index("layers") + 2])
                norm = params.get(f"{layer_prefix}.post_attention_layernorm.weight")
                if norm is None:
                    continue
                input_rms = norm.float().pow(2).mean().sqrt()
                spread = weight.shape[1] ** 0.5 * input_rms * weight.float().std()
                weight.mul_(float(std / spread))

    DummyModelLoader.load_weights = load_weights


def fill_integer_weights() -> None:
    """Dummy loading leaves integer (packed MXFP4) weights uninitialised; give them values.

    Scales (E8M0) 2^-7 and random packed FP4 values, so expert outputs are finite
    and vary with the token, before vLLM repacks them for its kernels.
    """
    import torch
    from vllm.model_executor.model_loader.dummy_loader import DummyModelLoader

    load = DummyModelLoader.load_weights

    def load_weights(self, model, model_config) -> None:
        load(self, model, model_config)
        for name, param in model.state_dict().items():
            if param.dtype != torch.uint8:
                continue
            if "scale" in name:
                param.fill_(120)
                continue
            generator = torch.Generator(device=param.device)
            generator.manual_seed(0)
            random = torch.randint(
                0, 256, param.shape, generator=generator, device=param.device, dtype=torch.int16
            )
            param.copy_(random.to(torch.uint8))

    DummyModelLoader.load_weights = load_weights


def run_engine(args) -> dict:
    """One family, this process: start, generate, check. Returns (and writes) its result."""
    import capture_fix

    from moe_profiler.reading import routes
    from moe_profiler.running import prompts
    from moe_profiler.running.local_models import build_dummy_model_dir
    from moe_profiler.verification import family_check, oracle, routing_rules
    from moe_route_log import plugin

    run = PLAN[args.family]
    out = Path(args.out)
    name = args.family if args.mode == "routes" else f"{args.family}-{args.mode}"
    result: dict = {"family": args.family, "mode": args.mode, "plan": asdict(run), "date": _now()}
    try:
        config = model_config(run)
        model_dir = Path(args.model_dir or f"/tmp/family-bench/{args.family}")
        if args.model_dir is None:
            config_file = out / "configs" / f"{args.family}.json"
            config_file.parent.mkdir(parents=True, exist_ok=True)
            config_file.write_text(json.dumps(config, indent=1) + "\n")
            build_dummy_model_dir(config_file, model_dir, prompts.load_questions(400, args.gsm8k))
        else:
            config = json.loads((model_dir / "config.json").read_text())
        result["config"] = {"layers": config["num_hidden_layers"], "moe_layers": moe_layers(config)}
        log_path = Path(args.log_dir) / f"{name}.jsonl"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        for name in [k for k in os.environ if k.startswith("VLLM_LOG_MOE")]:
            del os.environ[name]
        os.environ.update(
            VLLM_LOG_MOE=str(log_path),
            VLLM_LOG_MOE_LAYER="all",
            VLLM_LOG_MOE_REQ_ID=f"family_bench-{args.family}",
            VLLM_ENABLE_V1_MULTIPROCESSING="0",  # the tap lives in this process
        )
        if args.mode == "counts_graph":
            os.environ.update(VLLM_LOG_MOE_MODE="counts", VLLM_LOG_MOE_COUNTS_IN_GRAPH="1")
        patched = plugin.vllm_is_patched()
        family_captures = args.capture and run.capture  # every engine of a family alike
        capture = family_captures and args.mode == "routes"
        if capture and patched:
            capture_fix.enable()  # vLLM 0.15.1's capture returns zeros without it
        tap = LogitsTap()
        tap.install()
        fill_integer_weights()
        realistic_router_logits()
        from vllm import LLM, SamplingParams

        started = time.perf_counter()
        llm_args = {
            "model": str(model_dir),
            "load_format": args.load_format,
            "dtype": args.dtype,
            "seed": 0,
            "enforce_eager": args.eager,
            "max_model_len": 1024,
            "max_num_seqs": 64,
            # vLLM's capture needs prefix caching from 0.2x on (config/vllm.py, 0.34.0:
            # 1108-1140); every engine of a family gets the same setting
            "enable_prefix_caching": family_captures and not patched,
            "enable_return_routed_experts": capture,
            "quantization": run.quantization,
        }
        if args.kv_cache_gib:
            llm_args |= {"kv_cache_memory_bytes": int(args.kv_cache_gib * 2**30)}
            llm_args |= {"gpu_memory_utilization": 0.05}
        if run.attention_backend and not args.default_attention:
            llm_args["attention_backend"] = run.attention_backend
        llm = LLM(**llm_args)
        result["engine_start_s"] = round(time.perf_counter() - started, 1)
        params = SamplingParams(max_tokens=args.tokens, temperature=0, ignore_eos=True)
        started = time.perf_counter()
        outputs = llm.generate(prompts.load_questions(args.n, args.gsm8k), params, use_tqdm=False)
        result["generate_s"] = round(time.perf_counter() - started, 2)
        from moe_route_log import control

        dump = control.dump(llm)  # the device counts of the same passes (end-of-pass kernel)
        llm.llm_engine.engine_core.shutdown()
        routes.wait_until_complete(log_path, timeout=300)
        log = routes.LogFile(log_path, routes.read_header(log_path))
        header = log.header
        if args.mode == "counts_graph":
            result["counts"] = family_check.window_counts(log_path, header, dump)
            raise _Done
        got = list(routes.iter_routes(log, strict=True))
        layers = header["layers"]
        keys = ("layers", "moe_layers", "num_experts", "top_k", "layer_choice", "routing")
        result["header"] = {k: header.get(k) for k in keys}
        result["moe_layers_as_planned"] = header["moe_layers"] == result["config"]["moe_layers"]
        result["card"] = _card()
        import vllm

        result["vllm_version"] = vllm.__version__
        expected_tokens = sum(map(oracle.logged_tokens, outputs))
        counts: dict = {}
        for r in got:
            key = (r.req_id, r.pos, r.layer)
            counts[key] = counts.get(key, 0) + 1
        result["lines"] = {
            "route_lines": len(got),
            "expected": expected_tokens * len(layers),
            "duplicates": sum(c - 1 for c in counts.values()),
            "trailer": log.trailer is not None,
        }
        result["counts"] = family_check.route_counts(got, header, dump)
        if capture:
            reference = {o.request_id: o.outputs[0].routed_experts for o in outputs}
            cached = {o.request_id: o.num_cached_tokens or 0 for o in outputs}
            if all(not ids.any() for ids in reference.values()):
                result["capture"] = {"all_zeros": True}
            else:
                reference = {r: ids[:, layers] for r, ids in reference.items()}
                agreement = oracle.compare([log], reference, layers, skip_positions=cached)
                result["capture"] = {**agreement.as_dict(), "cached_tokens": sum(cached.values())}
        rule = routing_rules.rule_for(config)
        tapped = family_check.tapped_logits(tap.steps)
        precision = tap.score_precision()
        agreement = family_check.rule_agreement(got, tapped, rule, tap.biases, precision=precision)
        result["rule"] = {"rule": asdict(rule), "precision": precision, **agreement.as_dict()}
        if not args.keep_logs:
            log_path.unlink()
    except _Done:
        pass
    except BaseException as e:  # the error goes into the result; the other families go on
        result["error"] = repr(e)
        result["traceback"] = traceback.format_exc()[-4000:]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"{name}: {summary(result)}", flush=True)
    return result


class _Done(Exception):
    """A counts-mode engine has what it was run for."""


# ---------------------------------------------------------------- all families


def run_all(args) -> None:
    """Each wave: one process per family, side by side; a wave ends when all are done."""
    families = args.families.split(",") if args.families else list(PLAN)
    unknown = [f for f in families if f not in PLAN]
    if unknown:
        raise SystemExit(f"unknown families {unknown}; known: {', '.join(PLAN)}")
    modes = args.modes.split(",")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for wave in waves(families):
        started = time.monotonic()
        procs = {}
        for family, mode in ((f, m) for f in wave for m in modes):
            name = family if mode == "routes" else f"{family}-{mode}"
            cmd = [
                sys.executable,
                __file__,
                "engine",
                family,
                "--mode",
                mode,
                "--out",
                str(out),
                "--n",
                str(args.n),
                "--tokens",
                str(args.tokens),
                "--gsm8k",
                str(args.gsm8k),
                "--log-dir",
                str(args.log_dir),
            ]
            log = open(out / f"{name}.log", "w")  # noqa: SIM115 - closed below
            procs[name] = (family, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
        for name, (family, proc, log) in procs.items():
            left = max(1.0, args.wave_timeout - (time.monotonic() - started))
            try:
                proc.wait(timeout=left)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                error = f"timed out after {args.wave_timeout:.0f} s (wave limit)"
                _write_error(out, name, family, error)
            log.close()
            if proc.returncode and not (out / f"{name}.json").exists():
                _write_error(out, name, family, f"engine process exited with {proc.returncode}")
            print(f"== {name}: exit status {proc.returncode}", flush=True)
    for family in families:
        compare_modes(out, family, modes)
    print(table(out), flush=True)


def compare_modes(out: Path, family: str, modes: list[str]) -> None:
    """Counts counted in the graphs against the routes of the same prompts: written into the
    routes result as ``counts_graph_vs_routes``."""
    from moe_profiler.verification import family_check

    if "counts_graph" not in modes or "routes" not in modes:
        return
    routes_file, counts_file = out / f"{family}.json", out / f"{family}-counts_graph.json"
    routes_result, counts_result = (json.loads(f.read_text()) for f in (routes_file, counts_file))
    if "counts" not in routes_result or "counts" not in counts_result:
        return
    routes_result["counts_graph_vs_routes"] = family_check.counts_agree(
        routes_result["counts"], counts_result["counts"]
    )
    routes_file.write_text(json.dumps(routes_result, indent=1, default=str) + "\n")


def _write_error(out: Path, name: str, family: str, error: str) -> None:
    """``name``: the engine's result (``family`` or ``family-mode``)."""
    tail = (out / f"{name}.log").read_text(errors="replace")[-4000:]
    result = {
        "family": family,
        "plan": asdict(PLAN[family]),
        "date": _now(),
        "error": error,
        "log_tail": tail,
    }
    (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")


# ---------------------------------------------------------------- results


def summary(result: dict) -> str:
    if "error" in result:
        return f"ERROR {result['error']}"
    if result.get("mode", "routes") != "routes":
        counts = result["counts"]
        return (
            f"{result['mode']}: {counts['tokens']} tokens counted ({counts['counts_path']}), "
            f"dump {'=' if counts['dump_equals_windows'] else '!='} windows"
        )
    rule, lines = result["rule"], result["lines"]
    return (
        f"lines {lines['route_lines']}/{lines['expected']}, capture {_capture(result)}, "
        f"rule ids {_pct(rule['agreement'])} ({rule['tied']} tied, "
        f"scores in {rule.get('precision', 'float64')}), "
        f"weights {rule['weights_close']}/{rule['weights_compared']}"
    )


def _capture(result: dict) -> str:
    capture = result.get("capture")
    if capture is None:
        return "not run"
    if capture.get("all_zeros"):
        return "all zeros (monolithic kernel: vLLM's capture never sees its routes)"
    return f"{_pct(capture['agreement'])} of {capture['pairs']:,}"


def _counts(result: dict) -> str:
    """The counts checks in a few words: the dump of the routes engine's own passes, and the
    counts-in-graph engine of the same prompts (when it ran)."""
    own = result.get("counts", {}).get("dump_equals_routes")
    text = "-" if own is None else ("equal" if own else "DIFFERENT")
    graph = result.get("counts_graph_vs_routes")
    if graph is not None:
        text += "; " + (
            "equal" if graph["equal"] else f"{graph['choices_differing']} choices differ"
        )
    return text


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def table(out: Path) -> str:
    """Markdown rows, one per family result in ``out``."""
    rows = [
        "| family (config, layers run) | MoE method | route lines / expected | ids = vLLM capture "
        "| ids = family rule (ties) | weights = rule | counts = routes (end of pass; in graph) |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in sorted(Path(out).glob("*.json")):
        r = json.loads(path.read_text())
        if "family" not in r or "plan" not in r or r.get("mode", "routes") != "routes":
            continue
        name = f"{r['family']} ({r['plan']['config']}, {r.get('config', {}).get('layers', '?')})"
        if "error" in r:
            rows.append(f"| {name} | - | - | - | - | - | error: {r['error'][:120]} |")
            continue
        routing, lines, rule = r["header"]["routing"], r["lines"], r["rule"]
        method = routing["quant_method"] + (" (monolithic)" if routing["monolithic_kernel"] else "")
        rows.append(
            f"| {name} | {method} | {lines['route_lines']:,} / {lines['expected']:,} "
            f"| {_capture(r)} | {_pct(rule['agreement'])} of {rule['pairs']:,} ({rule['tied']}) "
            f"| {rule['weights_close']:,} / {rule['weights_compared']:,} "
            f"(max diff {rule['max_weight_diff']:.2g}) | {_counts(r)} |"
        )
    results = [json.loads(p.read_text()) for p in Path(out).glob("*.json")]
    cards = sorted({r["card"] for r in results if "card" in r})
    return "\n".join(rows) + f"\n\ncards: {', '.join(cards)}\n"


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def _card() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:  # a name for the record only
        return "unknown"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", type=Path, required=True, help="folder for NAME.json results")
    common.add_argument("--n", type=int, default=64, help="GSM8K prompts per family (%(default)s)")
    common.add_argument("--tokens", type=int, default=32, help="tokens generated per prompt")
    common.add_argument("--gsm8k", type=Path, default=DEFAULT_GSM8K, help="GSM8K test JSONL")
    common.add_argument(
        "--log-dir", type=Path, default=Path("/tmp/family-bench-logs"), help="route logs"
    )
    run = sub.add_parser("run", parents=[common], help="all families, wave by wave")
    run.add_argument("--families", default="", help="comma list (default: all of PLAN)")
    run.add_argument(
        "--modes",
        default="routes",
        help="comma list of engines per family, side by side: routes (every check), "
        "counts_graph (counts mode in the CUDA graphs, compared with the routes)",
    )
    run.add_argument(
        "--wave-timeout", type=float, default=240.0, help="seconds a wave may take (%(default)s)"
    )
    engine = sub.add_parser("engine", parents=[common], help="one family in this process")
    engine.add_argument("family", choices=list(PLAN))
    engine.add_argument("--model-dir", type=Path, help="use this model folder (CPU tests)")
    engine.add_argument("--load-format", default="dummy", help="LLM load_format (%(default)s)")
    engine.add_argument("--dtype", default="bfloat16", help="LLM dtype (%(default)s)")
    engine.add_argument("--eager", action="store_true", help="enforce_eager (CPU tests)")
    engine.add_argument(
        "--no-capture",
        dest="capture",
        action="store_false",
        help="without vLLM's enable_return_routed_experts (it needs CUDA)",
    )
    engine.add_argument(
        "--kv-cache-gib", type=float, default=2.0, help="KV cache per engine; 0: vLLM's sizing"
    )
    engine.add_argument(
        "--default-attention",
        action="store_true",
        help="leave the attention backend to vLLM (CPU tests)",
    )
    engine.add_argument("--keep-logs", action="store_true", help="keep the route log")
    engine.add_argument(
        "--mode",
        choices=("routes", "counts_graph"),
        default="routes",
        help="routes: every check; counts_graph: counts mode counted in the CUDA graphs, "
        "its counts kept for `run` to compare with the routes of the same prompts",
    )
    tab = sub.add_parser("table", help="markdown rows from a results folder")
    tab.add_argument("dir", type=Path)
    args = p.parse_args()
    if args.command == "run":
        run_all(args)
    elif args.command == "engine":
        result = run_engine(args)
        sys.exit(1 if "error" in result else 0)
    else:
        print(table(args.dir))


if __name__ == "__main__":
    main()
