"""Running vLLM with the route log (the code behind make_prompts.py, run_generate.py, test.sh).

prompts       GSM8K test questions -> prompts.txt (one prompt per line) and back
generate      run_generate.py as functions: log variables, engine, one timed greedy generate
local_models  model folders made offline: a tiny random MoE (smoke run, tests), a real
              model's config + tokenizer for dummy-weight runs (GPU benchmarks)
routed_experts  LLM.generate's outputs with vLLM's own routed experts (0.3x, no logger)
              saved as the report reads them

The change to vLLM itself (apply_hook.py) is ``moe_profiler.patching``.
"""
