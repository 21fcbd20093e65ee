#!/usr/bin/env python3
"""vLLM's own routed-experts capture and this logger, on the same requests of one server.

Starts one ``vllm serve`` with vLLM's capture on (``--enable-return-routed-experts``,
which needs prefix caching and, from vLLM 0.2x on, Model Runner V2: a GPU) and the
logger (every layer, from the plugin pip-installed in --plugin-site), sends it
completions and chat completions, and saves

- ``responses.jsonl``: each response body of the OpenAI endpoints as the ``openai``
  client receives it, with vLLM's ``routed_experts`` (base64 ``.npy``, ids only,
  ``[prompt + output - 1 tokens, layers, top_k]``);
- ``routes.jsonl``: the route log of the same server;
- ``check.json``: every logged (token, layer)'s ids against the capture's, as sets.

The pair is test data for the analyses (a native capture and a route log of the same
run), recorded where the capture runs.

  native_capture.py --plugin-site DIR --out DIR [--layers 4] [--requests 8]

The model: --config-json's config (Qwen1.5-MoE-A2.7B's by default) with its first
--layers decoder layers, dummy weights, a tokenizer made locally (--model-dir: one
already made).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from serve_bench import wait_healthy  # noqa: E402

CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"


def model_dir(args) -> Path:
    """--model-dir, or a dummy-weight folder of --config-json with --layers layers."""
    if args.model_dir is not None:
        return args.model_dir
    from moe_profiler.running import prompts
    from moe_profiler.running.local_models import build_dummy_model_dir

    config = json.loads(args.config_json.read_text())
    config["num_hidden_layers"] = args.layers
    folder = Path(f"/tmp/native-capture-{args.layers}-layers")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "source-config.json").write_text(json.dumps(config, indent=1))
    return build_dummy_model_dir(
        folder / "source-config.json", folder, prompts.load_questions(400, args.gsm8k)
    )


def post(port: int, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=300) as r:
        return json.loads(r.read())


def start(args, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_LOG_MOE")}
    env.update(
        VLLM_LOG_MOE=str(args.out / "routes.jsonl"),
        VLLM_LOG_MOE_LAYER="all",
        VLLM_LOG_MOE_REQ_ID="native_capture",
        PYTHONPATH=os.pathsep.join(p for p in (str(args.plugin_site), env.get("PYTHONPATH")) if p),
    )
    cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(args.model_dir)]
    cmd += ["--port", str(port), "--load-format", "dummy", "--max-model-len", "1024"]
    cmd += ["--gpu-memory-utilization", str(args.mem), "--seed", "0"]
    cmd += ["--enable-return-routed-experts", "--enable-prefix-caching"]
    cmd += ["--chat-template", CHAT_TEMPLATE]  # the local tokenizer has none
    log = open(args.out / "server.txt", "w")  # noqa: SIM115 (the server's life)
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def send(port: int, model: str, questions: list[str], requests: int) -> list[dict]:
    """``requests`` completions, then two chat completions, one at a time (greedy)."""
    common = {"model": model, "temperature": 0, "ignore_eos": True, "return_token_ids": True}
    bodies = []
    for i, q in enumerate(questions[:requests]):
        body = {**common, "prompt": q, "max_tokens": 8 + i % 9}
        bodies.append(post(port, "/v1/completions", body))
    for q in questions[requests : requests + 2]:
        body = {**common, "messages": [{"role": "user", "content": q}], "max_tokens": 12}
        bodies.append(post(port, "/v1/chat/completions", body))
    return bodies


def routed_experts(response: dict) -> tuple[list[int], np.ndarray]:
    """A response's token ids (prompt, then outputs) and its capture ``[tokens, layers, k]``."""
    choice = response["choices"][0]
    prompt = choice.get("prompt_token_ids") or response.get("prompt_token_ids")
    outputs = choice.get("token_ids") or []
    ids = np.load(io.BytesIO(base64.b64decode(choice["routed_experts"])))
    return list(prompt) + list(outputs), ids


def check(responses: list[dict], log_path: Path) -> dict:
    """Each logged (token, layer)'s ids against the capture of the response it belongs to
    (matched by token ids: the log's input ids are the prompt and outputs fed back)."""
    from moe_profiler.reading import routes
    from moe_profiler.verification import oracle

    routes.wait_until_complete(log_path, timeout=120)
    log = routes.LogFile(log_path, routes.read_header(log_path))
    got = list(routes.iter_routes(log, strict=True))
    layers = log.header["layers"]
    logged: dict[str, dict[int, int]] = {}
    for r in got:
        if r.layer == layers[0]:
            logged.setdefault(r.req_id, {})[r.pos] = r.tok
    captures = [routed_experts(resp) for resp in responses]
    reference, skip = {}, {}
    for req, toks in logged.items():
        for sequence, ids in captures:
            if all(sequence[pos] == tok for pos, tok in toks.items() if pos < len(sequence)):
                caller_id = req.rsplit("-", 1)[0]  # oracle.compare's key: vLLM's suffix off
                reference[caller_id] = ids[:, layers]
                skip[caller_id] = min(toks)  # prompt tokens served from the prefix cache
                break
    agreement = oracle.compare([log], reference, layers, skip_positions=skip)
    return {
        "responses": len(responses),
        "logged_requests": len(logged),
        "matched": len(reference),
        "route_lines": len(got),
        **agreement.as_dict(),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model-dir", type=Path, help="a config + tokenizer folder to use as it is")
    p.add_argument(
        "--config-json",
        type=Path,
        default=REPO / "bench/configs/qwen1.5-moe-a2.7b-chat.json",
        help="the model's config.json (default: Qwen1.5-MoE-A2.7B's)",
    )
    p.add_argument("--layers", type=int, default=4, help="decoder layers kept (%(default)s)")
    p.add_argument("--plugin-site", type=Path, required=True, help="the plugin pip-installed")
    p.add_argument("--out", type=Path, required=True, help="folder for the three files")
    p.add_argument("--requests", type=int, default=8, help="completions (plus 2 chats)")
    p.add_argument("--mem", type=float, default=0.3, help="gpu_memory_utilization")
    p.add_argument(
        "--gsm8k", type=Path, default=REPO / ".gpu" / "gsm8k-test.jsonl", help="GSM8K test JSONL"
    )
    p.add_argument("--port", type=int, default=8300, help="the server's port (%(default)s)")
    args = p.parse_args()
    from moe_profiler.running import prompts

    args.out.mkdir(parents=True, exist_ok=True)
    args.model_dir = model_dir(args)
    proc = start(args, args.port)
    try:
        wait_healthy(args.port, proc, timeout=900)
        questions = prompts.load_questions(args.requests + 2, args.gsm8k)
        responses = send(args.port, str(args.model_dir), questions, args.requests)
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the log gets its trailer
        proc.wait(timeout=120)
    with open(args.out / "responses.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in responses)
    result = check(responses, args.out / "routes.jsonl")
    (args.out / "check.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
