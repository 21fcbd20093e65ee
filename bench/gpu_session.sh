#!/usr/bin/env bash
# What a GPU session runs, in the order it runs it (device tool).
# The vLLM release is RELEASE (default 0.15.1): 0.15.1 runs the bundle in /tmp/vllm015 with
# vLLM patched (apply_hook.py); 0.34.0 runs /tmp/vllm034 with this project installed as a vLLM
# plugin (pip --target /tmp/plugin; the patch is for 0.15.1 only). Every subcommand takes it:
#   RELEASE=0.34.0 bash bench/gpu_session.sh setup
# Moving the bundle (tools/gpu_bundle/build.sh RELEASE OUTDIR built the parts; README "GPU
# bundles"): a folder of the repo that git ignores travels only when a call names it in
# `carry`, and is gone from the machine in the next call otherwise. So link each part into its
# own ignored folder (.bundle-00 holds MANIFEST too) and make one call per part, back to back
# (the machine is given back after 30 s idle): carry [".bundle-NN"], run
# `bash tools/gpu_bundle/install.sh RELEASE stash .bundle-NN` (the repo itself comes with
# every call). The setup call carries [".gpu", ".gpu-whl"] (gsm8k-test.jsonl and the model
# config; the cp312 wheels, 55 MB), later calls only [".gpu"].
# A pyarrow wheel for CPython 3.12 goes in .gpu-whl/ for 0.15.1 (pip download
# --only-binary=:all: --no-deps --python-version 3.12 --platform manylinux_2_28_x86_64 -d .gpu-whl
# 'pyarrow>=14'; 55 MB); for 0.34.0 it is optional (installed when there).
#
#   bash bench/gpu_session.sh setup             finish the bundle (install.sh RELEASE finish);
#                                               0.15.1: keep a pristine vLLM copy
#                                               (/tmp/vllm-pristine), patch vLLM; 0.34.0: the
#                                               plugin into /tmp/plugin; model folders
#   bash bench/gpu_session.sh plugin            (0.34.0) the plugin again into /tmp/plugin (setup
#                                               does it): after a change to the logger
#   bash bench/gpu_session.sh env               which bundle, PYTHONPATH and vLLM a step runs with
#   bash bench/gpu_session.sh smoke OUT MODEL   plugin_smoke.py: one logging engine on /tmp/MODEL,
#                                               its route lines checked against the tokens run
#   bash bench/gpu_session.sh micro OUT [recorder]
#                                               recorder_bench.py (device/host cost per piece)
#                                               and writer_bench.py (the writer's ceiling;
#                                               not with `recorder`)
#   bash bench/gpu_session.sh costs OUT MODEL CONFIGS REPS MEM KV
#                                               overhead_bench.py: one engine per configuration
#                                               on GPU0, rotating turns, 1319 GSM8K x 128
#   bash bench/gpu_session.sh serve OUT MODEL CONFIGS REPS RATE PROMPTS MEM KV
#                                               serve_bench.py: one `vllm serve` per
#                                               configuration on GPU0, `vllm bench serve` in
#                                               turns: PROMPTS at RATE req/s, 3 x PROMPTS at
#                                               saturation
#   bash bench/gpu_session.sh families OUT LIST [MODES]
#                                               family_bench.py run for the comma LIST, engines
#                                               per family: MODES (routes,counts_graph; default
#                                               routes); results as OUT/families.tar.gz
#   bash bench/gpu_session.sh native OUT        (0.34.0) native_capture.py: vLLM's own
#                                               routed_experts responses beside the route log of
#                                               the same `vllm serve` (test data for the analyses;
#                                               Qwen1.5-MoE's shape, 4 layers, dummy weights)
#   bash bench/gpu_session.sh oracle OUT        GPU0: oracle with CUDA graphs, then enforce_eager
#   bash bench/gpu_session.sh overhead OUT L... GPU0: paired off / logging engines, 1319 GSM8K
#                                               x 128 and the 25 seed prompts, VLLM_LOG_MOE_LAYER=L
#   bash bench/gpu_session.sh seed OUT L...     GPU0: the same pairing on the 25 seed prompts alone,
#                                               10 reps (a run lasts ~1.5 s, so more of them)
#   bash bench/gpu_session.sh single OUT        (2 GPUs) GPU0: oracle; GPU1: overhead series
#   bash bench/gpu_session.sh layouts OUT L...  parallel_bench.py run L for each layout, both GPUs
#
# Every step writes its JSON results under OUT; logs of each step go to OUT/*.log.
set -uo pipefail
cd "$(dirname "$0")/.."
# NVLink multicast stays off (the device rules): keep these set for every process.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export VLLM_ALLREDUCE_USE_SYMM_MEM=0

RELEASE=${RELEASE:-0.15.1}
case $RELEASE in
  0.15.1 | 0.34.0) ;;
  *) echo "gpu_session.sh: RELEASE must be 0.15.1 or 0.34.0, not '$RELEASE'" >&2; exit 2 ;;
esac
# shellcheck disable=SC1091
source tools/gpu_bundle/naming.sh
BUNDLE_DEST=${BUNDLE_DEST:-$(bundle_dest "$RELEASE")}
PLUGIN_DIR=${PLUGIN_DIR:-/tmp/plugin}

activate() {
  if [ ! -f "$BUNDLE_DEST/env.sh" ]; then
    echo "gpu_session.sh: no $BUNDLE_DEST/env.sh: run 'RELEASE=$RELEASE bash bench/gpu_session.sh setup' first" >&2
    exit 1
  fi
  # shellcheck disable=SC1091
  source "$BUNDLE_DEST/env.sh"
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
  if [ "$RELEASE" != 0.15.1 ]; then
    # the project as a vLLM plugin: its dist-info there carries the vllm.general_plugins
    # entry point that every vLLM process loads
    export PYTHONPATH="$PLUGIN_DIR:$PYTHONPATH"
  fi
}

install_plugin() {  # this checkout into $PLUGIN_DIR: no network, so no deps, no build isolation
  # built from a copy of what the package needs, so that no build/ or *.egg-info lands here
  local src
  src=$(mktemp -d)
  cp -r pyproject.toml README.md moe_profiler moe_route_log "$src"/
  rm -rf "$PLUGIN_DIR"
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --disable-pip-version-check \
    --target "$PLUGIN_DIR" "$src"
  local rc=$?
  rm -rf "$src"
  [ "$rc" = 0 ] || { echo "gpu_session.sh: the plugin did not install (pip exit $rc)" >&2; return "$rc"; }
  PYTHONPATH="$PLUGIN_DIR${PYTHONPATH:+:$PYTHONPATH}" python3 -c 'import importlib.metadata as m
eps = [e for e in m.entry_points(group="vllm.general_plugins")
       if e.dist is not None and e.dist.name == "vllm-moe-expert-profiler"]
print("vllm.general_plugins entry points of this project: "
      + (", ".join(f"{e.name} = {e.value}" for e in eps) or "none"))
if not eps:
    print("WARNING: this checkout registers no vllm.general_plugins entry point (pyproject.toml): "
          "vLLM will not load the logger")'
}

free_gpus() {  # whatever a failed step left on the GPUs
  nvidia-smi --query-compute-apps=pid --format=csv,noheader | xargs -r kill -9 2>/dev/null
  sleep 2
}

paired_on_one_gpu() {  # OUT NAME LAYERS ARGS...: parallel_bench.py run single, two engines on GPU0
  # Each engine has 0.46 of the card; max_num_seqs 128 keeps their smaller KV
  # caches from preempting, which would make run times race-dependent.
  local out=$1 name=$2 layers=$3
  shift 3
  CUDA_VISIBLE_DEVICES=0 python3 bench/parallel_bench.py run single --mem 0.46 \
    --max-num-seqs 128 --no-oracle --layers "$layers" --out "$out/$name-layers-$layers" "$@" \
    >"$out/$name-$layers.log" 2>&1
  echo "== layers $layers: exit status $?"
  grep -A5 "^single" "$out/$name-$layers.log"
  free_gpus
}

case "${1:-}" in
  setup)
    # the self-check's lines in full (the whole output: /tmp/install-RELEASE.log)
    bash tools/gpu_bundle/install.sh "$RELEASE" finish >"/tmp/install-$RELEASE.log" 2>&1
    echo "== install.sh $RELEASE finish: exit status $?"
    tail -45 "/tmp/install-$RELEASE.log"
    activate
    # the log checks read with pyarrow (not in vLLM's bundle): cp312 wheels in .gpu-whl/
    if [ "$RELEASE" = 0.15.1 ] || compgen -G ".gpu-whl/*.whl" >/dev/null; then
      python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu-whl/*.whl
    fi
    if [ "$RELEASE" = 0.15.1 ]; then
      mkdir -p /tmp/vllm-pristine && cp -a /tmp/vllm015/site/vllm /tmp/vllm-pristine/
      python3 apply_hook.py && python3 bench/gpu_bench.py prepare
    else
      install_plugin && python3 bench/gpu_bench.py prepare
    fi
    python3 bench/gpu_bench.py prepare --config-json bench/configs/olmoe-1b-7b-0924.json \
      --model-dir /tmp/olmoe-dummy
    nvidia-smi --query-gpu=name,memory.total --format=csv
    ;;
  plugin)
    [ "$RELEASE" != 0.15.1 ] || { echo "gpu_session.sh: 0.15.1 is patched (setup), not a plugin" >&2; exit 2; }
    activate
    install_plugin
    ;;
  env)
    activate
    echo "release $RELEASE: $BUNDLE_DEST/env.sh"
    echo "PYTHONPATH=$PYTHONPATH"
    python3 -c 'import vllm; print("vllm", vllm.__version__, "from", vllm.__file__)'
    ;;
  smoke)
    activate
    out=$2 model=$3
    mkdir -p "$out"
    CUDA_VISIBLE_DEVICES=0 python3 bench/plugin_smoke.py --model-dir "/tmp/$model" \
      >"$out/smoke-$model.log" 2>&1
    echo "== smoke $model: exit status $?"
    grep -E '^\{' "$out/smoke-$model.log" | tail -2
    tail -4 "$out/smoke-$model.log" | grep -v '^{'
    free_gpus
    ;;
  micro)
    activate
    out=$2
    mkdir -p "$out"
    python3 bench/recorder_bench.py --out "$out/recorder.json" 2>&1 | tail -4
    if [ "${3:-}" != recorder ]; then
      python3 bench/writer_bench.py --encoders 1,2,4,8 --seconds 6 --out "$out/writer.json"
    fi
    ;;
  serve)
    activate
    out=$2 model=$3 configs=$4 reps=$5 rate=$6 prompts=$7 mem=$8 kv=$9
    mkdir -p "$out"
    plugin_args=()
    [ "$RELEASE" = 0.15.1 ] || plugin_args=(--plugin-site "$PLUGIN_DIR")
    CUDA_VISIBLE_DEVICES=0 python3 bench/serve_bench.py run --model-dir "/tmp/$model" \
      --configs "$configs" --reps "$reps" --rate "$rate" --num-prompts "$prompts" "${plugin_args[@]}" \
      --saturation-prompts $((prompts * 3)) \
      --mem "$mem" --kv-gib "$kv" --out "$out/serve-$model.json" >"$out/serve-$model.log" 2>&1
    echo "== serve $model: exit status $?"
    python3 bench/serve_bench.py table "$out/serve-$model.json"
    tail -3 "$out/serve-$model.log"
    free_gpus
    ;;
  families)
    activate
    out=$2
    mkdir -p "$out"
    python3 bench/family_bench.py run --families "$3" --modes "${4:-routes}" --out /tmp/families \
      --wave-timeout "${WAVE_TIMEOUT:-240}" >"$out/families.log" 2>&1
    echo "== families $3: exit status $?"
    tail -15 "$out/families.log"
    tar -czf "$out/families.tar.gz" -C /tmp families
    free_gpus
    ;;
  native)
    activate
    out=$2
    mkdir -p "$out"
    CUDA_VISIBLE_DEVICES=0 python3 bench/native_capture.py --plugin-site "$PLUGIN_DIR" \
      --out "$out/native" >"$out/native.log" 2>&1
    echo "== native: exit status $?"
    tail -3 "$out/native.log"
    free_gpus
    ;;
  costs)
    activate
    out=$2 model=$3 configs=$4 reps=$5 mem=$6 kv=$7
    mkdir -p "$out"
    plugin_args=()  # the plugin is on every engine's path (activate); vLLM's capture (r3)
    # needs prefix caching from 0.2x on, and every engine then runs with it
    [ "$RELEASE" = 0.15.1 ] || plugin_args=(--plugin-site "$PLUGIN_DIR" --prefix-caching)
    CUDA_VISIBLE_DEVICES=0 python3 bench/overhead_bench.py run --model-dir "/tmp/$model" \
      --configs "$configs" --reps "$reps" --mem "$mem" --kv-gib "$kv" "${plugin_args[@]}" \
      --max-num-seqs "${MAX_NUM_SEQS:-128}" \
      --out "$out/costs-$model.json" >"$out/costs-$model.log" 2>&1
    echo "== costs $model: exit status $?"
    tail -12 "$out/costs-$model.log"
    free_gpus
    ;;
  oracle)
    activate
    out=$2
    mkdir -p "$out"
    CUDA_VISIBLE_DEVICES=0 python3 bench/gpu_bench.py series oracle_graphs,oracle_eager \
      --oracle-n 512 --oracle-n-eager 128 --out "$out/single" --log-dir /tmp/logs0 \
      >"$out/oracle.log" 2>&1
    grep -h -E "oracle.*(tok/s|oracle \{)|^== " "$out/oracle.log"
    ;;
  overhead)
    activate
    out=$2
    shift 2
    for layers in "$@"; do
      paired_on_one_gpu "$out" overhead "$layers" --n 1319 --reps 4 --seed-prompts
    done
    ;;
  seed)
    # parallel_bench times GSM8K-format JSONL: hand it prompts.txt as one
    # (its result files name this workload "gsm8k", with 25 prompts).
    activate
    out=$2
    shift 2
    python3 -c "import json, sys; sys.stdout.writelines(
      json.dumps({'question': line}) + '\n' for line in open('prompts.txt').read().splitlines())" \
      >/tmp/seed25.jsonl
    for layers in "$@"; do
      paired_on_one_gpu "$out" seed "$layers" --n 25 --gsm8k /tmp/seed25.jsonl --reps 10
    done
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
    sed -n "2,/^# Every step/p" "$0"
    exit 2
    ;;
esac
