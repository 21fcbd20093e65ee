"""Timed greedy generation with vLLM, with or without the route log.

Everything ``run_generate.py`` does, as functions: set the VLLM_LOG_MOE*
variables before the engine starts, build ``vllm.LLM``, warm it up, time one
``generate`` call, save the outputs, merge the numbers into timing.json.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from moe_profiler import patching
from moe_profiler.reading import routes

DEFAULT_MODEL = "Qwen/Qwen1.5-MoE-A2.7B-Chat"
MODES = ("no_log", "log")
WARMUP_TOKENS = 8


@dataclass
class RunOptions:
    """What to run; the defaults are the documented ones of run_generate.py."""

    model: str = DEFAULT_MODEL
    prompts: Path = Path("prompts.txt")
    max_tokens: int = 128
    seed: int = 0
    tensor_parallel_size: int = 1
    eager: bool = False
    load_format: str = "auto"
    chat: bool | None = None  # None: use the tokenizer's chat template if it has one
    dtype: str = "auto"
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.85
    prefix_caching: bool = True
    log_path: Path = Path("moe_routes.jsonl")
    log_layers: str | None = None  # None: the logger's default (first MoE layer)
    run_label: str | None = None
    outputs_dir: Path = Path(".")
    timing: Path = Path("timing.json")


def set_log_environment(mode: str, opts: RunOptions) -> dict[str, str]:
    """Set (log) or clear (no_log) the VLLM_LOG_MOE* variables; returns what was set."""
    for name in [k for k in os.environ if k.startswith("VLLM_LOG_MOE")]:
        del os.environ[name]
    if mode != "log":
        return {}
    env = {
        "VLLM_LOG_MOE": str(Path(opts.log_path).resolve()),
        "VLLM_LOG_MOE_SEED": str(opts.seed),
        "VLLM_LOG_MOE_MODEL_ID": opts.model,
        "VLLM_LOG_MOE_REQ_ID": opts.run_label or f"run_generate-{time.strftime('%Y%m%dT%H%M%S')}",
    }
    if opts.log_layers:
        env["VLLM_LOG_MOE_LAYER"] = opts.log_layers
    os.environ.update(env)
    return env


def require_patched() -> None:
    """Raise unless the installed vLLM carries this checkout's route logger."""
    state = patching.check(patching.Installed.find())
    if state.state != patching.PATCHED:
        raise patching.PatchError(
            f"the installed vLLM is {state.state}, not patched with this checkout's route "
            "logger: run python3 apply_hook.py first"
        )


def build_llm(opts: RunOptions):
    """The ``vllm.LLM`` for ``opts`` (environment variables must be set before)."""
    from vllm import LLM

    kwargs = {}
    if opts.max_model_len:
        kwargs["max_model_len"] = opts.max_model_len
    return LLM(
        model=opts.model,
        tensor_parallel_size=opts.tensor_parallel_size,
        enforce_eager=opts.eager,
        load_format=opts.load_format,
        dtype=opts.dtype,
        seed=opts.seed,
        gpu_memory_utilization=opts.gpu_memory_utilization,
        enable_prefix_caching=opts.prefix_caching,
        **kwargs,
    )


def format_prompts(llm, questions: list[str], chat: bool | None) -> tuple[list[str], bool]:
    """Questions as prompts, in the chat template when ``chat`` (None: if the model has one)."""
    tokenizer = llm.get_tokenizer()
    if chat is None:
        chat = getattr(tokenizer, "chat_template", None) is not None
    if not chat:
        return questions, False
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        for q in questions
    ], True


def timed_generate(llm, prompts: list[str], max_tokens: int, seed: int):
    """Warm up with one short request, then time greedy ``generate`` over all prompts."""
    from vllm import SamplingParams

    llm.generate(
        prompts[:1], SamplingParams(max_tokens=WARMUP_TOKENS, temperature=0), use_tqdm=False
    )
    params = SamplingParams(max_tokens=max_tokens, temperature=0, seed=seed)
    started = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=True)
    return outputs, time.perf_counter() - started


def close_llm(llm) -> None:
    """Shut the engine down now (its route-log writers then finish on their own)."""
    try:
        llm.llm_engine.engine_core.shutdown()
    finally:
        del llm
        gc.collect()


def output_records(outputs, questions: list[str]) -> list[dict]:
    """One JSON-able record per request, in prompt order."""
    return [
        {
            "index": i,
            "request_id": o.request_id,
            "question": questions[i],
            "prompt_token_ids": list(o.prompt_token_ids),
            "num_cached_tokens": o.num_cached_tokens or 0,  # prefix-cache hits: no route lines
            "token_ids": list(o.outputs[0].token_ids),
            "text": o.outputs[0].text,
        }
        for i, o in enumerate(outputs)
    ]


def write_records(records: list[dict], path: Path) -> Path:
    """The outputs as JSONL at ``path`` (its folder is made if missing)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return path


@dataclass
class TimedRun:
    """What one run of ``run_timed`` measured and wrote."""

    result: dict  # wall_s, prompt/output tokens, output tokens/s (+ log files in log mode)
    setup: dict  # what it ran on (``run_setup``)
    timing: dict  # timing.json after the merge (overhead once both modes ran)
    outputs_file: Path


def run_timed(mode: str, opts: RunOptions, questions: list[str]) -> TimedRun:
    """Build the engine, time one greedy ``generate`` over ``questions``, save the outputs and
    merge the numbers into timing.json. Set the VLLM_LOG_MOE* variables first
    (``set_log_environment``); in log mode this waits until the log is complete."""
    llm = build_llm(opts)
    texts, chat = format_prompts(llm, questions, opts.chat)
    outputs, seconds = timed_generate(llm, texts, opts.max_tokens, opts.seed)
    setup = run_setup(opts, len(questions), chat)
    close_llm(llm)
    records = output_records(outputs, questions)
    outputs_file = write_records(records, Path(opts.outputs_dir) / f"outputs_{mode}.jsonl")
    output_tokens = sum(len(r["token_ids"]) for r in records)
    result = {
        "wall_s": round(seconds, 4),
        "prompt_tokens": sum(len(r["prompt_token_ids"]) for r in records),
        "output_tokens": output_tokens,
        "output_tok_per_s": round(output_tokens / seconds, 2),
    }
    if mode == "log":
        files = wait_for_logs(opts.log_path)
        result.update(log_files=[str(f) for f in files], log_layers=opts.log_layers)
    timing = merge_timing(opts.timing, mode, setup, result, outputs_file)
    return TimedRun(result, setup, timing, outputs_file)


def device_name() -> str:
    """The GPU's name, or the CPU's when there is no GPU."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def run_setup(opts: RunOptions, num_prompts: int, chat: bool) -> dict:
    """What a timing is comparable on: two modes are compared only when these match."""
    import vllm

    return {
        "model": opts.model,
        "load_format": opts.load_format,
        "device": device_name(),
        "vllm_version": vllm.__version__,
        "prompts": num_prompts,
        "max_tokens": opts.max_tokens,
        "execution": _execution(opts.eager),
        "tensor_parallel_size": opts.tensor_parallel_size,
        "chat_template": chat,
        "seed": opts.seed,
    }


def _execution(eager: bool) -> str:
    if eager:
        return "eager (enforce_eager)"
    import torch

    graphs = "CUDA graphs" if torch.cuda.is_available() else "no CUDA graphs on CPU"
    return f"torch.compile, {graphs} (vLLM default)"


def merge_timing(path: Path, mode: str, setup: dict, result: dict, outputs_file: Path) -> dict:
    """Merge one mode's numbers into timing.json; add the overhead once both modes match."""
    timing = json.loads(Path(path).read_text()) if Path(path).exists() else {}
    if timing.get("setup") != setup:
        timing = {"setup": setup, "runs": {}}  # numbers of another setup are not comparable
    timing["runs"][mode] = {**result, "outputs": str(outputs_file)}
    runs = timing["runs"]
    if all(m in runs for m in MODES):
        base, logged = runs["no_log"]["output_tok_per_s"], runs["log"]["output_tok_per_s"]
        timing["log_overhead_pct"] = round((base / logged - 1.0) * 100.0, 2)
        timing["greedy_outputs_match"] = _same_tokens(
            runs["no_log"]["outputs"], runs["log"]["outputs"]
        )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(timing, indent=1) + "\n")
    return timing


def _same_tokens(a: str, b: str) -> bool:
    def tokens(path: str) -> list:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line)["token_ids"] for line in f]

    try:
        return tokens(a) == tokens(b)
    except OSError:
        return False


def wait_for_logs(log_path: Path, timeout: float = 600.0) -> list[Path]:
    """Wait until every file of this log (one per rank) is completely written."""
    files = routes.rank_files(Path(log_path))
    for file in files:
        routes.wait_until_complete(file, timeout)
    return files


def options_dict(opts: RunOptions) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()}
