# Where a vLLM release's bundle lives on the GPU host; sourced by build.sh, install.sh and
# bench/gpu_session.sh so that the three agree.
#   bundle_dest 0.34.0  -> /tmp/vllm034   (0.15.1 -> /tmp/vllm015: the shared bundle's place)
#   bundle_parts 0.34.0 -> /tmp/vllm-bundle-0.34.0/parts   (where install.sh stashes parts)
bundle_dest() {
  local major minor
  if [[ ! ${1:-} =~ ^([0-9]+)\.([0-9]+)\.[0-9]+$ ]]; then
    echo "not a vLLM release (X.Y.Z): '${1:-}'" >&2
    return 2
  fi
  major=${BASH_REMATCH[1]} minor=${BASH_REMATCH[2]}
  printf '/tmp/vllm%s%02d\n' "$major" "$((10#$minor))"
}
bundle_parts() {
  bundle_dest "${1:-}" >/dev/null || return 2
  echo "${BUNDLE_ROOT:-/tmp}/vllm-bundle-$1/parts"
}
