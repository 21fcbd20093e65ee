#!/usr/bin/env bash
# What one GPU session runs, in the order it runs it (device tool, 2 x H100).
# The bundle parts of ../shared/gpu must already be stashed (install_bundle.sh stash).
#
#   bash bench/gpu_session.sh setup             finish the bundle, patch vLLM, model folder
#   bash bench/gpu_session.sh single OUT        GPU0: oracle graphs + eager; GPU1: overhead series
#   bash bench/gpu_session.sh layouts OUT L...  parallel_bench.py run L for each layout, both GPUs
#
# Every step writes its JSON results under OUT; logs of each step go to OUT/*.log.
set -uo pipefail
cd "$(dirname "$0")/.."
# NVLink multicast stays off (the device rules): keep these set for every process.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export VLLM_ALLREDUCE_USE_SYMM_MEM=0

activate() {
  # shellcheck disable=SC1091
  source /tmp/vllm015/env.sh
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
}

free_gpus() {  # whatever a failed step left on the GPUs
  nvidia-smi --query-compute-apps=pid --format=csv,noheader | xargs -r kill -9 2>/dev/null
  sleep 2
}

case "${1:-}" in
  setup)
    bash .gpu/install_bundle.sh finish 2>&1 | tail -5
    activate
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/orjson*.whl
    python3 apply_hook.py && python3 bench/gpu_bench.py prepare
    nvidia-smi --query-gpu=name,memory.total --format=csv
    ;;
  single)
    activate
    out=$2
    mkdir -p "$out"
    (CUDA_VISIBLE_DEVICES=0 python3 bench/gpu_bench.py series oracle_graphs,oracle_eager \
      --oracle-n 512 --oracle-n-eager 128 --out "$out/single" --log-dir /tmp/logs0 \
      >"$out/oracle.log" 2>&1) &
    (CUDA_VISIBLE_DEVICES=1 python3 bench/gpu_bench.py series off,all,layer0 \
      --reps 1 --out "$out/single" --log-dir /tmp/logs1 >"$out/series.log" 2>&1) &
    wait
    grep -h -E "^(oracle|off|layer0|all).*(tok/s|oracle)|^== " "$out"/oracle.log "$out"/series.log
    ;;
  layouts)
    activate
    out=$2
    shift 2
    mkdir -p "$out/parallel"
    for layout in "$@"; do
      timeout 290 python3 bench/parallel_bench.py run "$layout" --n 256 --reps 3 \
        --out "$out/parallel" \
        >"$out/$layout.log" 2>&1
      echo "== $layout: exit status $?"
      grep -A4 "^$layout:" "$out/$layout.log"
      free_gpus
    done
    ;;
  *)
    sed -n 2,8p "$0"
    exit 2
    ;;
esac
