#!/usr/bin/env bash
# build.sh [--dry-run] RELEASE OUTDIR
#
# Builds the offline bundle that runs vLLM RELEASE (the official CUDA wheel) on its own torch
# on the GPU host: no network, Python 3.12, torch 2.11.0+cu130 and the CUDA 13 nvidia-* pip
# packages already there, files at most 64 MiB per call. Result: OUTDIR/part-000, part-001, ...
# (60 MiB at most each), OUTDIR/MANIFEST (sha256 of every part and of the whole) and
# OUTDIR/CONTENTS.txt. On the host, tools/gpu_bundle/install.sh RELEASE stash/finish turns the
# parts into /tmp/vllmXYZ/ (e.g. /tmp/vllm034) with its env.sh.
#
#   bash tools/gpu_bundle/build.sh 0.34.0 /work/bundles/vllm034    vLLM 0.34.0 + torch 2.14.0
#   bash tools/gpu_bundle/build.sh 0.15.1 /work/bundles/vllm015    vLLM 0.15.1 + torch 2.9.1
#   bash tools/gpu_bundle/build.sh --dry-run 0.34.0 /tmp/x         download and resolve only:
#                                                 prints the wheel list, builds nothing
#
# What each release takes is in releases/RELEASE.sh (pins, what is left out and why, which
# CUDA libraries are carried or reused from the host); the README section "GPU bundles" has
# the reasons. Run on x86-64 Linux with python3 (venv + pip), readelf, xz, tar and access to
# PyPI; nothing here may sit inside a git work tree (the script refuses). The time is mostly
# xz. Measured on 2 cores busy with others' tests: 0.34.0 (2.3 GiB) took 10.7 min in all with
# XZ_LEVEL=2 (15 parts) and 35 min with XZ_LEVEL=6 (14 parts); 0.15.1 (4.5 GiB), 13.5 min with 2.
#
# Environment overrides:
#   WORK          scratch folder (default /tmp/vllm-bundle-work-RELEASE; the downloads in
#                 WORK/dl are reused by the next run)
#   VLLM_WHEEL    the vllm wheel (default WORK/dl/<the release's wheel>, downloaded if absent)
#   TORCH_DIR     where the cp312 torch / triton / torchvision wheels are or get downloaded
#   CUDA_DIR      where the carried nvidia-* wheels are or get downloaded
#   FULL_CUDA     1 = also carry the CUDA libraries the release reuses from the host where
#                 their versions differ (see the release file); default 0
#   DEPS_CUTOFF   only dependency releases uploaded before this (pip --uploaded-prior-to;
#                 default: the release file's, the day after the vllm wheel was built;
#                 empty = newest); the release's LATEST names are exempt
#   INDEX_URL     package index for the downloads (default: PyPI)
#   XZ_LEVEL      xz preset (default 2; 6 is 5-14 % smaller and ~3x slower)
#   XZ_THREADS    xz threads (default 2)
#   SKIP_ARCHIVE  1 = stop after WORK/stage/ is complete (no xz, no parts): to try the tree
#   PYTHON        python3 that makes the throwaway venv (default python3)
set -euo pipefail

DRY_RUN=0
if [ "${1:-}" = --dry-run ]; then DRY_RUN=1; shift; fi
if [ $# -ne 2 ]; then sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; fi
RELEASE=$1
OUTDIR=$2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONF=$HERE/releases/$RELEASE.sh
if [ ! -f "$CONF" ]; then
  echo "build.sh: no release file $CONF (known: $(cd "$HERE/releases" && ls | sed 's/\.sh$//' | tr '\n' ' '))" >&2
  exit 2
fi
# shellcheck disable=SC1090
source "$CONF"
[ "$VLLM_VER" = "$RELEASE" ] || { echo "build.sh: $CONF is for $VLLM_VER" >&2; exit 2; }
# shellcheck disable=SC1091
source "$HERE/naming.sh"
DEST=$(bundle_dest "$RELEASE")
ARCHIVE_NAME=$(basename "$DEST")-bundle.tar.xz

WORK=${WORK:-/tmp/vllm-bundle-work-$RELEASE}
VLLM_WHEEL=${VLLM_WHEEL:-$WORK/dl/$VLLM_WHEEL_NAME}
TORCH_DIR=${TORCH_DIR:-$WORK/dl/torch-cp312}
CUDA_DIR=${CUDA_DIR:-$WORK/dl/cuda}
FULL_CUDA=${FULL_CUDA:-0}
DEPS_CUTOFF=${DEPS_CUTOFF-$DEPS_CUTOFF_DEFAULT}
INDEX_URL=${INDEX_URL:-}
XZ_LEVEL=${XZ_LEVEL:-2}
XZ_THREADS=${XZ_THREADS:-2}
SKIP_ARCHIVE=${SKIP_ARCHIVE:-0}
PART_BYTES=$((60 * 1024 * 1024))
PY=${PYTHON:-python3}
if [ "$FULL_CUDA" = 1 ]; then
  CUDA_CARRY=$FULL_CUDA_CARRY
  TORCH_DROP=("${FULL_CUDA_TORCH_DROP[@]}")
  ENV_EXTRA=$FULL_CUDA_ENV_EXTRA
fi

for d in "$OUTDIR" "$WORK" "$TORCH_DIR" "$CUDA_DIR" "$(dirname "$VLLM_WHEEL")"; do
  # wheels and build outputs never go into a git work tree
  if git -C "$(dirname "$(realpath -m "$d")")" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    echo "build.sh: refusing to put wheels or build outputs inside a git work tree: $d" >&2; exit 1
  fi
done
for tool in readelf strip xz tar sha256sum "$PY"; do
  command -v "$tool" >/dev/null || { echo "build.sh: missing tool: $tool" >&2; exit 1; }
done

T0=$(date +%s)
log() { printf '\n== [%4ss] %s\n' "$(($(date +%s) - T0))" "$*"; }

PLAT_ARGS=()
for p in $PLATFORMS; do PLAT_ARGS+=(--platform "$p"); done
pipdl() {  # pipdl DIR REQ...
  local d=$1; shift
  "$PY" -m pip --isolated download -q --no-deps --only-binary=:all: --disable-pip-version-check \
    --python-version 3.12 --implementation cp "${PLAT_ARGS[@]}" ${INDEX_URL:+--index-url "$INDEX_URL"} \
    -d "$d" "$@"
}
wheel_of() {  # wheel_of DIR NAME VERSION: the downloaded wheel's path ('' if none)
  local fn; fn=$(echo "$2" | tr - _)-$3-
  ls "$1/$fn"*.whl 2>/dev/null | head -1 || true
}

STAGE=$WORK/stage
SITE=$STAGE/site
VENV=$WORK/venv
mkdir -p "$WORK" "$OUTDIR" "$TORCH_DIR" "$CUDA_DIR"

# ---------------------------------------------------------------- inputs
log "vllm $RELEASE: inputs (FULL_CUDA=$FULL_CUDA) in $WORK"
if [ ! -f "$VLLM_WHEEL" ]; then
  mkdir -p "$(dirname "$VLLM_WHEEL")"
  pipdl "$(dirname "$VLLM_WHEEL")" "vllm==$RELEASE"
fi
for spec in "torch==$TORCH_VER" "triton==$TRITON_VER" "torchvision==$TORCHVISION_VER"; do
  n=${spec%%==*}; v=${spec#*==}
  [ -n "$(ls "$TORCH_DIR/$n-$v-cp312-cp312-"*.whl 2>/dev/null)" ] || pipdl "$TORCH_DIR" --abi cp312 "$spec"
done
TORCH_WHEEL=$(ls "$TORCH_DIR"/torch-"$TORCH_VER"-cp312-cp312-*.whl)
TRITON_WHEEL=$(ls "$TORCH_DIR"/triton-"$TRITON_VER"-cp312-cp312-*.whl)
TORCHVISION_WHEEL=$(ls "$TORCH_DIR"/torchvision-"$TORCHVISION_VER"-cp312-cp312-*.whl)

# ---------------------------------------------------------------- build venv
log "throwaway venv (pip>=25.1 for --uploaded-prior-to, packaging)"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import packaging' 2>/dev/null; then
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip --isolated install -q --disable-pip-version-check -U 'pip>=25.1' packaging
fi
VPY=$VENV/bin/python
TOOLS=("$VPY" "$HERE/bundle_tools.py")

# the CUDA libraries carried: an explicit NAME==VERSION, or torch's exact pin of NAME
CUDA_WHEELS=()
CUDA_CARRIED=()
for entry in $CUDA_CARRY; do
  if [[ $entry == *==* ]]; then pkg=${entry%%==*}; ver=${entry#*==}
  else pkg=$entry; ver=$("${TOOLS[@]}" pins "$TORCH_WHEEL" "$pkg" | awk '{print $2}'); fi
  w=$(wheel_of "$CUDA_DIR" "$pkg" "$ver")
  if [ -z "$w" ]; then pipdl "$CUDA_DIR" "$pkg==$ver"; w=$(wheel_of "$CUDA_DIR" "$pkg" "$ver"); fi
  [ -n "$w" ] || { echo "build.sh: no wheel for $pkg==$ver in $CUDA_DIR" >&2; exit 1; }
  CUDA_WHEELS+=("$w")
  CUDA_CARRIED+=("$pkg==$ver")
done
ls -l "$VLLM_WHEEL" "$TORCH_WHEEL" "$TRITON_WHEEL" "$TORCHVISION_WHEEL" ${CUDA_WHEELS[@]+"${CUDA_WHEELS[@]}"}

# ---------------------------------------------------------------- wheels
log "resolving vllm's other dependencies (pip download --no-deps, METADATA closure)"
SEED_ARGS=()
for s in ${SEEDS[@]+"${SEEDS[@]}"}; do SEED_ARGS+=(--seed "$s"); done
"${TOOLS[@]}" resolve "$WORK/wheels" --seed-from-wheel "$VLLM_WHEEL" ${SEED_ARGS[@]+"${SEED_ARGS[@]}"} \
  --host "$HOST_PKGS" ${HOST_VERSIONS_FILE:+--host-versions "$HERE/$HOST_VERSIONS_FILE"} --host-keep "$HOST_KEEP" \
  --skip-re "$SKIP_RE" --platform "$PLATFORMS" --cutoff "$DEPS_CUTOFF" \
  ${INDEX_URL:+--index-url "$INDEX_URL"} --latest "$LATEST" --wheels-txt "$WORK/wheels.txt" \
  | tee "$WORK/resolve.log"

if [ "$DRY_RUN" = 1 ]; then
  log "dry run: what the bundle would hold (nothing built)"
  echo "vllm==$RELEASE (minus: ${VLLM_DROP[*]})"
  echo "torch==$TORCH_VER (minus: ${TORCH_DROP[*]})"
  echo "triton==$TRITON_VER"
  echo "torchvision==$TORCHVISION_VER"
  for c in ${CUDA_CARRIED[@]+"${CUDA_CARRIED[@]}"}; do echo "$c (lib/ only)"; done
  sed 's/  #.*//' "$WORK/wheels.txt"
  exit 0
fi

# ---------------------------------------------------------------- site/
rm -rf "$STAGE"
mkdir -p "$SITE"
log "vllm run-time files from $(basename "$VLLM_WHEEL")"
DROP_ARGS=()
for d in "${VLLM_DROP[@]}"; do DROP_ARGS+=(--drop "$d"); done
"${TOOLS[@]}" extract-vllm "$VLLM_WHEEL" "$SITE" "${DROP_ARGS[@]}"

log "vllm's other dependencies"
"${TOOLS[@]}" unpack "$SITE" "$WORK"/wheels/*.whl

log "torch $TORCH_VER, triton $TRITON_VER, torchvision $TORCHVISION_VER"
DROP_ARGS=()
for d in "${TORCH_DROP[@]}"; do DROP_ARGS+=(--drop "$d"); done
"${TOOLS[@]}" unpack "$SITE" "$TORCH_WHEEL" "${DROP_ARGS[@]}"
# *.a: static CUPTI / nvperf archives (only for building triton's profiler).
"${TOOLS[@]}" unpack "$SITE" "$TRITON_WHEEL" --drop '*.a'
"${TOOLS[@]}" unpack "$SITE" "$TORCHVISION_WHEEL"

if [ ${#CUDA_WHEELS[@]} -gt 0 ]; then
  log "CUDA libraries: ${CUDA_CARRIED[*]}"
  # Dropped: headers; nvidia/__init__.py (site/nvidia must stay a namespace package so that
  # the host's nvidia.* packages remain importable); libraries nothing in this stack loads.
  "${TOOLS[@]}" unpack "$SITE" "${CUDA_WHEELS[@]}" \
    --drop 'nvidia/__init__.py' --drop 'nvidia/*/include/*' \
    --drop 'nvidia/cuda_nvrtc/lib/*.alt.so*' --drop 'nvidia/cublas/lib/libnvblas*' \
    --drop 'nvidia/cufft/lib/libcufftw*' --drop 'nvidia/cuda_cupti/lib/libnvperf*' \
    --drop 'nvidia/cuda_cupti/lib/libpcsamplingutil*' --drop 'nvidia/cuda_cupti/lib/libcheckpoint*' \
    --drop 'nvidia/nvshmem/lib/*.a' --drop 'nvidia/nvshmem/lib/*.bc' \
    --drop 'nvidia/cuda_cupti/extras/*'
fi
find "$SITE" -name '__pycache__' -prune -exec rm -rf {} +
for f in ${STRIP_DEBUG[@]+"${STRIP_DEBUG[@]}"}; do
  [ -f "$SITE/$f" ] || { echo "build.sh: STRIP_DEBUG names a file the bundle lacks: $f" >&2; exit 1; }
  before=$(stat -c %s "$SITE/$f")
  strip --strip-debug "$SITE/$f"
  echo "strip --strip-debug $f: $((before / 1048576)) -> $(($(stat -c %s "$SITE/$f") / 1048576)) MiB"
done

# ---------------------------------------------------------------- checks
log "checking that every library torch and vllm need at load time is carried or reused"
declare -A REUSED=()   # soname -> host folder under nvidia/
HOST_LINKS=()
for spec in "${HOST_LIBS[@]}"; do
  read -r sonames folder rest <<<"$spec"
  if [ -e "$SITE/nvidia/$folder" ]; then continue; fi   # carried (FULL_CUDA): nothing to link
  HOST_LINKS+=("$folder $rest")
  [ "$sonames" = - ] && continue
  for so in ${sonames//,/ }; do REUSED[$so]=$folder; done
done
missing=0
while IFS= read -r so; do
  for n in $(readelf -d "$so" | awk '/\(NEEDED\)/ {gsub(/[][]/, "", $NF); print $NF}'); do
    case $n in
      libc.so.6 | libm.so.6 | libdl.so.2 | librt.so.1 | libpthread.so.0 | libstdc++.so.6 | \
      libgcc_s.so.1 | ld-linux-x86-64.so.2 | libcuda.so.1) continue ;;
    esac
    if [ -e "$SITE/torch/lib/$n" ] || ls "$SITE"/nvidia/*/lib/"$n" >/dev/null 2>&1; then continue; fi
    if [ -n "${REUSED[$n]:-}" ]; then continue; fi
    if [ "$(basename "$so")" = libtorch_cuda_linalg.so ] && [ "$n" = libcusolver.so.11 ]; then
      continue  # 0.15.1 with FULL_CUDA=0 drops this library; with FULL_CUDA=1 cusolver is carried
    fi
    echo "  MISSING: ${so#"$SITE"/} needs $n"; missing=1
  done
done < <(find "$SITE/torch/lib" "$SITE/torch" -maxdepth 1 -name '*.so*' -type f; find "$SITE/vllm" -name '*.so' -type f)
[ "$missing" = 0 ] || { echo "build.sh: some needed libraries are neither carried nor reused" >&2; exit 1; }
echo "ok: carried under site/nvidia/: $(cd "$SITE" && ls -d nvidia/*/lib 2>/dev/null | sed 's,nvidia/,,; s,/lib,,' | tr '\n' ' ')"
echo "    reused from the host: ${!REUSED[*]}"

{
  echo "# site/nvidia/<folder> entries install.sh links to the host's CUDA 13 packages"
  echo "# <folder> dir <host nvidia/ subfolder>   : symlink the whole folder"
  echo "# <folder> files <glob under host nvidia/> : real <folder>/lib with per-file symlinks"
  for l in ${HOST_LINKS[@]+"${HOST_LINKS[@]}"}; do echo "$l"; done
} > "$STAGE/host-links.txt"
cat "$STAGE/host-links.txt"

# what install.sh and its self-check read (bash syntax, values quoted)
{
  echo "# written by tools/gpu_bundle/build.sh $RELEASE $(date -u +%Y-%m-%dT%H:%MZ)"
  printf 'BUNDLE_RELEASE=%q\n' "$RELEASE"
  printf 'BUNDLE_TORCH=%q\n' "$TORCH_VER"
  printf 'BUNDLE_TRITON=%q\n' "$TRITON_VER"
  printf 'BUNDLE_CHECK_MODULES=%q\n' "$CHECK_MODULES"
  printf 'BUNDLE_NOT_BUNDLED=%q\n' "$(echo $SKIP_RE)"
  printf 'BUNDLE_FULL_CUDA=%q\n' "$FULL_CUDA"
} > "$STAGE/bundle.env"
printf '%s\n' "$ENV_EXTRA" > "$STAGE/env-extra.sh"

{
  echo "# vllm $RELEASE offline bundle: what site/ holds (built $(date -u +%Y-%m-%dT%H:%MZ), FULL_CUDA=$FULL_CUDA)"
  echo "vllm==$RELEASE (run-time files; minus ${VLLM_DROP[*]})"
  echo "torch==$TORCH_VER (minus ${TORCH_DROP[*]})"
  echo "triton==$TRITON_VER (minus static *.a archives)"
  echo "# debug information stripped from: ${STRIP_DEBUG[*]:-nothing}"
  echo "torchvision==$TORCHVISION_VER"
  for c in ${CUDA_CARRIED[@]+"${CUDA_CARRIED[@]}"}; do echo "$c (lib/ only)"; done
  sed 's/  #.*//' "$WORK/wheels.txt"
  echo "# reused from the host's CUDA 13 packages: ${!REUSED[*]}"
  echo "# requirements not bundled (regexes): $(echo $SKIP_RE)"
} > "$STAGE/CONTENTS.txt"
du -sh "$SITE"

if [ "$SKIP_ARCHIVE" = 1 ]; then
  log "SKIP_ARCHIVE=1: the tree is in $STAGE (site/, host-links.txt, bundle.env); no parts made"
  exit 0
fi

# ---------------------------------------------------------------- archive
log "archiving (tar | xz -$XZ_LEVEL -T$XZ_THREADS); this takes a while"
ARCHIVE=$WORK/$ARCHIVE_NAME
rm -f "$ARCHIVE"
tar -C "$STAGE" --sort=name --owner=0 --group=0 --numeric-owner -cf - . \
  | xz -T"$XZ_THREADS" -"$XZ_LEVEL" -c > "$ARCHIVE"
ls -l "$ARCHIVE"

log "splitting into parts of at most 60 MiB"
"${TOOLS[@]}" split "$ARCHIVE" "$OUTDIR" --part-bytes "$PART_BYTES" \
  --title "vllm $RELEASE + torch $TORCH_VER offline bundle for Python 3.12 (tools/gpu_bundle)" \
  --field "release=$RELEASE" --field "dest=$DEST" --field compression=xz --field "full_cuda=$FULL_CUDA"
cp "$STAGE/CONTENTS.txt" "$OUTDIR/CONTENTS.txt"
rm -f "$ARCHIVE"

log "done"
NPARTS=$(awk '$1 == "parts" {print $2}' "$OUTDIR/MANIFEST")
TOTAL=$(awk '$1 == "archive_bytes" {print $2}' "$OUTDIR/MANIFEST")
echo "vllm $RELEASE: $NPARTS part(s), $TOTAL bytes ($(awk -v b="$TOTAL" 'BEGIN{printf "%.1f", b/1048576}') MiB) in $OUTDIR, MANIFEST: $OUTDIR/MANIFEST"
