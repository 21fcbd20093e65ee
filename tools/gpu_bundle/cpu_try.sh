#!/usr/bin/env bash
# cpu_try.sh RELEASE OUTDIR
#
# Installs the bundle parts in OUTDIR (of build.sh RELEASE OUTDIR) on THIS machine, against a
# made-up GPU host, the way install.sh does it there, and imports what a vLLM run of a text MoE
# model imports. Catches before any GPU time is spent: a part or MANIFEST that does not
# verify, a library torch cannot load next to the host's CUDA 13 libraries (e.g. an
# "undefined symbol" from a too old NCCL), a Python package the bundle lacks or the host's
# versions break, a stripped library that no longer loads, Triton unable to compile for sm_90.
# What needs the GPU (compiled vLLM modules need libcuda.so.1, CUDA graphs, generation) is
# left to install.sh's self-check on the host.
#
#   bash tools/gpu_bundle/cpu_try.sh 0.34.0 /work/bundles/vllm034
#
# The made-up host (kept in FAKE_HOST, default /tmp/fake-gpu-host, reused by the next run):
# a Python 3.12 venv (PYTHON312, default: python3.12 on PATH or pyenv's 3.12) with the host's
# packages at the versions of host-versions.txt, and the CUDA 13 wheels torch 2.11.0 pins
# (about 2 GB) unpacked in its own site folder, found on sys.path as the host's are. Its
# Python packages are re-checked on every run; the CUDA wheels are fetched once.
# Needs PyPI the first time, xz, and about 3 GB + the extracted bundle in FAKE_HOST.
set -euo pipefail

if [ $# -ne 2 ]; then sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; fi
RELEASE=$1
OUTDIR=$(realpath "$2")
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FAKE=${FAKE_HOST:-/tmp/fake-gpu-host}
[ -f "$OUTDIR/MANIFEST" ] || { echo "cpu_try.sh: no $OUTDIR/MANIFEST" >&2; exit 1; }
PY312=${PYTHON312:-}
if [ -z "$PY312" ]; then  # the first that runs (a pyenv shim may be on PATH and refuse)
  for c in python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
    if "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
      PY312=$c
      break
    fi
  done
fi
[ -n "$PY312" ] || { echo "cpu_try.sh: no Python 3.12 found (set PYTHON312)" >&2; exit 1; }

# The host's CUDA 13 packages: torch 2.11.0's pins (cuda-toolkit 13.0.2 and the four below).
HOST_CUDA="nvidia-cublas==13.1.0.3 nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88
 nvidia-cuda-cupti==13.0.85 nvidia-cufft==12.0.0.61 nvidia-cufile==1.15.1.6
 nvidia-curand==10.4.0.35 nvidia-cusolver==12.0.4.66 nvidia-cusparse==12.6.3.3
 nvidia-nvjitlink==13.0.88 nvidia-nvtx==13.0.85 nvidia-cudnn-cu13==9.19.0.56
 nvidia-cusparselt-cu13==0.8.0 nvidia-nccl-cu13==2.28.9 nvidia-nvshmem-cu13==3.4.5"
# The host's Python packages a vLLM run can touch (the rest of its image is irrelevant here).
HOST_PY="numpy safetensors sentencepiece tiktoken einops psutil regex requests aiohttp pillow
 opencv-python-headless prometheus-client protobuf pyyaml cloudpickle filelock tqdm grpcio
 py-cpuinfo rich typer click jinja2 uvloop httpx anyio h11 xxhash msgpack packaging hf-xet
 ninja six charset-normalizer idna urllib3 transformers huggingface-hub tokenizers setuptools
 sympy mpmath networkx fsspec typing-extensions pyarrow cuda-bindings>=13.0.3,<14"

mkdir -p "$FAKE/site" "$FAKE/dl"
if [ ! -x "$FAKE/venv/bin/python" ]; then
  echo "== making the made-up GPU host in $FAKE (once)"
  "$PY312" -m venv "$FAKE/venv"
  "$FAKE/venv/bin/python" -m pip --isolated install -q -U pip
fi
# every run (quick once satisfied), so that a change of the list or of host-versions.txt lands
grep -v '^#' "$HERE/host-versions.txt" | sed 's/ *#.*//' | grep -v '^torch\|^triton' \
  | grep . > "$FAKE/constraints.txt"
# shellcheck disable=SC2086
"$FAKE/venv/bin/python" -m pip --isolated install -q -c "$FAKE/constraints.txt" $HOST_PY
if [ ! -f "$FAKE/.cuda-complete" ]; then
  echo "== the host's CUDA 13 wheels into $FAKE/site (once, about 2 GB)"
  plat=()
  for i in $(seq 31 -1 5); do plat+=(--platform "manylinux_2_${i}_x86_64"); done
  plat+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
  # shellcheck disable=SC2086
  python3 -m pip --isolated download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${plat[@]}" -d "$FAKE/dl" $HOST_CUDA
  for w in "$FAKE"/dl/*.whl; do python3 -m zipfile -e "$w" "$FAKE/site"; done
  rm -f "$FAKE/site/nvidia/__init__.py"
  touch "$FAKE/.cuda-complete"
fi
# python3 of the made-up host: its own site-packages plus the CUDA folder, as sys.path entries
cat > "$FAKE/python3" <<EOF
#!/bin/sh
PYTHONPATH="\${PYTHONPATH:+\$PYTHONPATH:}$FAKE/site" exec "$FAKE/venv/bin/python" "\$@"
EOF
chmod +x "$FAKE/python3"

# shellcheck disable=SC1091
source "$HERE/naming.sh"
DEST=$FAKE/$(basename "$(bundle_dest "$RELEASE")")
export PYTHON=$FAKE/python3 BUNDLE_ROOT=$FAKE/tmp DEST
rm -rf "$BUNDLE_ROOT/vllm-bundle-$RELEASE"
echo "== stash (hard links of the parts, so OUTDIR keeps them)"
incoming=$FAKE/incoming
rm -rf "$incoming" && mkdir -p "$incoming"
ln "$OUTDIR"/MANIFEST "$OUTDIR"/part-* "$incoming"/
bash "$HERE/install.sh" "$RELEASE" stash "$incoming" | tail -3
echo "== finish (the self-check's CUDA steps fail here: no GPU)"
T0=$(date +%s)
bash "$HERE/install.sh" "$RELEASE" finish
echo "finish took $(($(date +%s) - T0)) s"

echo "== imports of a text MoE run, and a Triton kernel compiled for sm_90 (no GPU needed)"
(
  # shellcheck disable=SC1091
  source "$DEST/env.sh"
  cd /tmp
  # a file, not stdin: triton's @jit reads its kernel's source
  cat > "$FAKE/try_imports.py" <<'EOF'
import importlib
import sys
import time

mods = ["torch", "triton", "vllm", "vllm.entrypoints.llm", "vllm.entrypoints.openai.api_server",
        "vllm.model_executor.layers.fused_moe"]
if sys.argv[1] != "0.15.1":
    mods += ["vllm.v1.worker.gpu.model_runner", "vllm.model_executor.models.qwen2_moe",
             "vllm.model_executor.models.transformers.moe",
             "vllm.v1.attention.backends.flash_attn",
             "vllm.model_executor.layers.fused_moe.experts.triton_moe",
             "vllm.v1.structured_output.backend_xgrammar"]
bad = 0
for m in mods:
    t = time.time()
    try:
        importlib.import_module(m)
        print(f"  ok   {m} ({time.time() - t:.1f} s)")
    except Exception as e:
        bad += 1
        print(f"  FAIL {m}: {type(e).__name__}: {e}")

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget


@triton.jit
def add(x, y, o, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    tl.store(o + i, tl.load(x + i, mask=m) + tl.load(y + i, mask=m), mask=m)


sig = {"x": "*fp32", "y": "*fp32", "o": "*fp32", "n": "i32", "BLOCK": "constexpr"}
try:
    src = triton.compiler.ASTSource(fn=add, signature=sig, constexprs={"BLOCK": 256})
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32))
    print(f"  ok   triton {triton.__version__}: a kernel compiled for sm_90, "
          f"cubin {len(k.asm['cubin'])} bytes")
except Exception as e:
    bad += 1
    print(f"  FAIL triton compile for sm_90: {type(e).__name__}: {e}")
sys.exit(1 if bad else 0)
EOF
  "$PYTHON" "$FAKE/try_imports.py" "$RELEASE"
)
echo "cpu_try.sh: vllm $RELEASE bundle in $OUTDIR installs and imports on the made-up host"
