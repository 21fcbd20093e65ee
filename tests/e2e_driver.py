"""Runs one real vLLM engine for the end-to-end tests and saves what it generated.

  python tests/e2e_driver.py SPEC.json OUT.json

SPEC: {"model": dir, "prompts": [...], "max_tokens": n, "eager": bool,
       "prefix_caching": bool, "rounds": k (generate the prompts k times),
       "max_model_len": n (default 512), "llm": {extra LLM(...) arguments},
       "check_log_after_shutdown": bool (wait for the log to be complete right
       after the engine shut down, before this process exits),
       "settle_s": seconds to wait before shutting down (data parallel: let every
       rank's engine leave its step loop first, as vLLM's DP example does),
       "control_out": path (the offline controls of moe_route_log.control: stop,
       generate the first two prompts unlogged, start, then the run; the merged
       dump and status go to this JSON file)}
The VLLM_LOG_MOE* variables come from the environment, as users set them.
"""

import json
import os
import sys
import time


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=spec["model"],
        dtype="float32",
        seed=0,
        max_model_len=spec.get("max_model_len", 512),
        enforce_eager=spec.get("eager", False),
        enable_prefix_caching=spec.get("prefix_caching", False),
        **spec.get("llm", {}),
    )
    params = SamplingParams(max_tokens=spec["max_tokens"], temperature=0, ignore_eos=True)
    control_out = spec.get("control_out")
    if control_out:
        from moe_route_log import control  # the plugin's, and the patch's copy's twin

        control.stop(llm)
        llm.generate(spec["prompts"][:2], params, use_tqdm=False)  # stopped: not logged
        control.start(llm)
    records = []
    for _ in range(spec.get("rounds", 1)):
        for out in llm.generate(spec["prompts"], params, use_tqdm=False):
            records.append(
                {
                    "request_id": out.request_id,
                    "prompt_token_ids": list(out.prompt_token_ids),
                    "token_ids": list(out.outputs[0].token_ids),
                    "num_cached_tokens": out.num_cached_tokens or 0,
                }
            )
    if control_out:
        with open(control_out, "w") as f:
            json.dump({"dump": control.dump(llm), "status": control.status(llm)}, f)
    time.sleep(spec.get("settle_s", 0))
    llm.llm_engine.engine_core.shutdown()
    if spec.get("check_log_after_shutdown"):
        from moe_profiler.reading import routes

        path = os.environ["VLLM_LOG_MOE"]
        routes.wait_until_complete(path, timeout=60)
        with open(path, "rb") as f:
            records.append({"last_line": json.loads(f.read().splitlines()[-1])})
    with open(sys.argv[2], "w") as f:
        json.dump(records, f)


if __name__ == "__main__":
    main()
