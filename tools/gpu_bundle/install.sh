#!/usr/bin/env bash
# install.sh RELEASE stash DIR | status | finish | check
#
# Unpacks a bundle of tools/gpu_bundle/build.sh on the GPU host (no network; the repo comes
# with every call, so this script is there as tools/gpu_bundle/install.sh):
#
#   install.sh 0.34.0 stash .bundle-03   move the part-* files (and MANIFEST) found in DIR into
#                                        /tmp/vllm-bundle-0.34.0/parts/, check them against the
#                                        MANIFEST once it is there; run after every transfer
#   install.sh 0.34.0 status             which parts are present / missing / damaged
#   install.sh 0.34.0 finish             verify every part and the whole (sha256), extract to
#                                        /tmp/vllm034/, link the host's CUDA 13 libraries the
#                                        bundle reuses into its site/nvidia/, write env.sh and
#                                        run the self-check (needs the GPU)
#   install.sh 0.34.0 check              run the self-check again
#
# Then, in each shell: source /tmp/vllm034/env.sh (0.15.1: /tmp/vllm015/env.sh).
# The self-check (self_check.py, kept as /tmp/vllmXYZ/self_check.py): torch's version and
# torch.cuda.is_available(), an fp16 matmul, cuDNN/NCCL versions, a Triton kernel compiled
# and run, vLLM's compiled modules imported and torch.ops._C.fused_add_rms_norm called,
# vllm.__version__, the CUDA libraries the process loaded, and (warnings only) every
# requirement of vLLM that the installed versions, bundle over host, miss.
#
# Environment: PYTHON (default python3), BUNDLE_ROOT (parts under BUNDLE_ROOT/vllm-bundle-
# RELEASE/parts; default /tmp), DEST (default /tmp/vllmXYZ for release X.YZ.*).
# Bundles of ../shared/gpu/build_bundle.sh (0.15.1, MANIFEST without a release line) work too.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 2 ] || usage
RELEASE=$1
CMD=$2
shift 2
# shellcheck disable=SC1091
source "$HERE/naming.sh"
DEST=${DEST:-$(bundle_dest "$RELEASE")} || usage
PARTS=$(bundle_parts "$RELEASE")
PY=${PYTHON:-python3}
MANIFEST=$PARTS/MANIFEST

die() { echo "install.sh: $*" >&2; exit 1; }
mf() { awk -v k="$1" '$1 == k { print $2; exit }' "$MANIFEST"; }
expected_sha() { awk -v p="$1" '$1 == "part" && $2 == p { print $3; exit }' "$MANIFEST"; }
expected_parts() { awk '$1 == "part" { print $2 }' "$MANIFEST"; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

# A MANIFEST of another release must not be mixed with this one's parts. Shared-builder
# MANIFESTs (0.15.1) have no release line; their archive is vllm015-bundle.tar.xz.
manifest_release() {
  local r; r=$(awk '$1 == "release" { print $2; exit }' "$1")
  if [ -z "$r" ] && [ "$(awk '$1 == "archive" { print $2; exit }' "$1")" = vllm015-bundle.tar.xz ]; then
    r=0.15.1
  fi
  echo "$r"
}

# prints "ok", "BAD", "missing", "not-in-MANIFEST" or, while no MANIFEST is there, "unchecked"
part_state() {
  local p=$1
  [ -f "$PARTS/$p" ] || { echo missing; return; }
  [ -f "$MANIFEST" ] || { echo unchecked; return; }
  local want; want=$(expected_sha "$p")
  [ -n "$want" ] || { echo "not-in-MANIFEST"; return; }
  if [ "$(sha "$PARTS/$p")" = "$want" ]; then echo ok; else echo BAD; fi
}

cmd_status() {
  mkdir -p "$PARTS"
  if [ ! -f "$MANIFEST" ]; then
    echo "MANIFEST: not yet received (it comes with the first part)"
    local n=0 f
    for f in "$PARTS"/part-*; do
      [ -f "$f" ] || continue
      echo "  $(basename "$f")  $(stat -c %s "$f") bytes (unchecked)"
      n=$((n + 1))
    done
    echo "$n part(s) present"
    return 0
  fi
  local total ok=0 missing=() bad=() p s
  total=$(mf parts)
  echo "MANIFEST: vllm $RELEASE, $(mf archive), $total part(s), $(mf archive_bytes) bytes"
  for p in $(expected_parts); do
    s=$(part_state "$p")
    printf '  %-9s %s\n' "$p" "$s"
    case $s in ok) ok=$((ok + 1)) ;; missing) missing+=("$p") ;; *) bad+=("$p") ;; esac
  done
  echo "$ok of $total part(s) present and verified"
  [ ${#missing[@]} -eq 0 ] || echo "missing: ${missing[*]}"
  [ ${#bad[@]} -eq 0 ] || echo "damaged (send again): ${bad[*]}"
  if [ "$ok" = "$total" ]; then echo "complete: run 'install.sh $RELEASE finish'"; fi
}

cmd_stash() {
  local src=${1:?usage: install.sh RELEASE stash DIR}
  [ -d "$src" ] || die "no such directory: $src"
  mkdir -p "$PARTS"
  if [ -f "$src/MANIFEST" ]; then
    local r; r=$(manifest_release "$src/MANIFEST")
    [ "$r" = "$RELEASE" ] || die "$src/MANIFEST is for vllm '${r:-?}', not $RELEASE"
  fi
  local moved=0 f b
  for f in "$src"/MANIFEST "$src"/part-*; do
    [ -f "$f" ] || continue
    b=$(basename "$f")
    if [ "$(realpath "$f")" = "$(realpath -m "$PARTS/$b")" ]; then continue; fi
    mv -f "$f" "$PARTS/$b"
    echo "stashed $b ($(stat -c %s "$PARTS/$b") bytes)"
    moved=$((moved + 1))
  done
  [ "$moved" -gt 0 ] || echo "nothing new in $src"
  cmd_status
}

cmd_finish() {
  [ -f "$MANIFEST" ] || die "MANIFEST missing in $PARTS (stash it with the parts)"
  local r; r=$(manifest_release "$MANIFEST")
  [ "$r" = "$RELEASE" ] || die "$MANIFEST is for vllm '${r:-?}', not $RELEASE"
  local total p s bad=0
  total=$(mf parts)
  echo "checking $total part(s) ..."
  for p in $(expected_parts); do
    s=$(part_state "$p")
    [ "$s" = ok ] || { echo "  $p: $s"; bad=1; }
  done
  [ "$bad" = 0 ] || die "parts missing or damaged; see 'install.sh $RELEASE status'"
  local files=()
  for p in $(expected_parts); do files+=("$PARTS/$p"); done
  echo "checking the whole archive (sha256) ..."
  local got; got=$(cat "${files[@]}" | sha256sum | cut -d' ' -f1)
  [ "$got" = "$(mf archive_sha256)" ] || die "archive sha256 mismatch: $got"

  echo "extracting into $DEST ..."
  rm -rf "$DEST"
  mkdir -p "$DEST"
  if command -v xz >/dev/null; then
    cat "${files[@]}" | xz -dc | tar -xf - -C "$DEST" --no-same-owner
  else
    cat "${files[@]}" | "$PY" -c 'import sys, lzma, tarfile
tarfile.open(fileobj=lzma.open(sys.stdin.buffer), mode="r|").extractall(sys.argv[1], filter="data")' "$DEST"
  fi
  [ -d "$DEST/site/torch" ] || die "archive has no site/torch"
  if [ ! -f "$DEST/bundle.env" ]; then
    [ "$RELEASE" = 0.15.1 ] || die "archive has no bundle.env"
    legacy_bundle_env  # a bundle of ../shared/gpu/build_bundle.sh
  fi

  link_host_libs
  write_env
  self_check
  echo "done. Next: source $DEST/env.sh"
}

legacy_bundle_env() {
  cat > "$DEST/bundle.env" <<'EOF'
# ../shared/gpu/build_bundle.sh bundle: what tools/gpu_bundle/releases/0.15.1.sh says
BUNDLE_RELEASE=0.15.1
BUNDLE_TORCH=2.9.1
BUNDLE_TRITON=3.5.1
BUNDLE_CHECK_MODULES='vllm._C vllm._moe_C vllm.cumem_allocator vllm.vllm_flash_attn._vllm_fa3_C'
BUNDLE_NOT_BUNDLED='torch.* triton.* ray flashinfer.* nvidia-.* cuda-.* cupy.*'
EOF
  : > "$DEST/env-extra.sh"
}

# site/nvidia/<folder> links to the host's CUDA 13 packages, per host-links.txt (written by
# build.sh). torch's libraries find their CUDA libraries through RPATH
# $ORIGIN/../../nvidia/<folder>/lib, so these links put the host's copies where torch looks.
link_host_libs() {
  local spec=$DEST/host-links.txt
  if ! grep -qv '^#' "$spec" 2>/dev/null; then
    echo "no host libraries to link"; return 0
  fi
  # the host's site-packages folders holding nvidia/ (without the bundle's PYTHONPATH)
  local hostdirs
  hostdirs=$(env -u PYTHONPATH "$PY" -c 'import sys, os
for p in sys.path:
    if p and os.path.isdir(os.path.join(p, "nvidia")):
        print(os.path.join(os.path.abspath(p), "nvidia"))')
  [ -n "$hostdirs" ] || die "no nvidia/ folder on the host python's sys.path"
  echo "host nvidia/ folders: $(echo "$hostdirs" | tr '\n' ' ')"
  find_host() {  # first host nvidia/ folder holding $1 (a path under nvidia/)
    local h
    for h in $hostdirs; do
      if [ -e "$h/$1" ]; then echo "$h/$1"; return 0; fi
    done
    return 1
  }
  local folder kind rest g src dstlib
  mkdir -p "$DEST/site/nvidia"
  while read -r folder kind rest; do
    case $folder in '' | '#'*) continue ;; esac
    if [ -e "$DEST/site/nvidia/$folder" ] || [ -L "$DEST/site/nvidia/$folder" ]; then
      die "site/nvidia/$folder already exists; refusing to link over it"
    fi
    case $kind in
      dir)
        src=$(find_host "$rest") || die "host has no nvidia/$rest (needed for $folder)"
        ln -s "$src" "$DEST/site/nvidia/$folder"
        echo "  site/nvidia/$folder -> $src"
        ;;
      files)
        dstlib=$DEST/site/nvidia/$folder/lib
        mkdir -p "$dstlib"
        for g in $rest; do
          src=$(find_host "$g") || die "host has no nvidia/$g (needed for $folder)"
          ln -s "$src" "$dstlib/$(basename "$src")"
          echo "  site/nvidia/$folder/lib/$(basename "$src") -> $src"
        done
        ;;
      *) die "bad line in $spec: $folder $kind $rest" ;;
    esac
  done < "$spec"
}

write_env() {
  # The bundle's own CUDA library folders also go on LD_LIBRARY_PATH, for anything that
  # dlopen()s them by bare name (torch's libraries find them through RPATH). Folders that
  # are or hold links to the host are left out: the host's libraries must not come first.
  local libpath="" d
  for d in "$DEST"/site/nvidia/*/lib; do
    [ -d "$d" ] || continue
    [ -L "$(dirname "$d")" ] && continue
    [ -n "$(find "$d" -maxdepth 1 -type l -print -quit)" ] && continue
    libpath=${libpath:+$libpath:}$d
  done
  cat > "$DEST/env.sh" <<EOF
# vllm $RELEASE offline bundle: source this before running vllm (written by tools/gpu_bundle/install.sh)
export PYTHONPATH="$DEST/site\${PYTHONPATH:+:\$PYTHONPATH}"
export LD_LIBRARY_PATH="$libpath\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export PATH="$DEST/site/bin:\$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
# the bundle's triton keeps its compiled kernels and launcher stubs apart from the host's
export TRITON_CACHE_DIR="\${TRITON_CACHE_DIR:-$DEST/cache/triton}"
export VLLM_BUNDLE_RELEASE=$RELEASE
EOF
  cat "$DEST/env-extra.sh" >> "$DEST/env.sh"
  mkdir -p "$DEST/cache/triton"
  echo "wrote $DEST/env.sh"
}

self_check() {
  echo "self-check (needs the GPU):"
  cp "$HERE/self_check.py" "$DEST/self_check.py"
  local rc=0
  (
    # shellcheck disable=SC1091
    source "$DEST/bundle.env"
    export BUNDLE_RELEASE BUNDLE_TORCH BUNDLE_TRITON BUNDLE_CHECK_MODULES BUNDLE_NOT_BUNDLED
    # shellcheck disable=SC1091
    source "$DEST/env.sh"
    cd /tmp
    "$PY" "$DEST/self_check.py"
  ) || rc=$?
  [ "$rc" = 0 ] || echo "WARNING: self-check FAILED (see above)"
  SELF_CHECK_RC=$rc
}
SELF_CHECK_RC=0

case $CMD in
  stash) cmd_stash "$@" ;;
  status) cmd_status ;;
  finish) cmd_finish ;;
  check)
    [ -f "$DEST/env.sh" ] || die "run 'install.sh $RELEASE finish' first"
    self_check
    exit "$SELF_CHECK_RC"
    ;;
  *) usage ;;
esac
