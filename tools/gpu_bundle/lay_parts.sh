#!/usr/bin/env bash
# lay_parts.sh RELEASE OUTDIR      put each part of a bundle into its own git-ignored folder
# lay_parts.sh --clean             remove those folders again
#
# The device tool copies the repo's working tree to the GPU host with each call, plus the
# ignored folders named in `carry` (64 MiB in all), so each part travels alone: part-NNN goes
# into .bundle-NN/ at the top of this checkout (a hard link where possible: the parts stay in
# OUTDIR, outside the tree), MANIFEST into .bundle-00/ beside part-000. Then it prints the
# calls to make, one per part, back to back, and the setup call:
#
#   bash tools/gpu_bundle/lay_parts.sh 0.34.0 /work/bundles/vllm034
#   carry [".bundle-00"]  bash tools/gpu_bundle/install.sh 0.34.0 stash .bundle-00
#   ...
#   carry [".gpu", ".gpu-whl"]  RELEASE=0.34.0 bash bench/gpu_session.sh setup
#
# BUNDLE_TREE: the checkout to lay them in (default: the one holding this script).
set -euo pipefail
cd "${BUNDLE_TREE:-$(dirname "${BASH_SOURCE[0]}")/../..}"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
if [ "${1:-}" = --clean ]; then
  rm -rf .bundle-[0-9][0-9]
  exit 0
fi
[ $# -eq 2 ] || usage
RELEASE=$1
OUTDIR=$2
MANIFEST=$OUTDIR/MANIFEST
[ -f "$MANIFEST" ] || { echo "lay_parts.sh: no $MANIFEST" >&2; exit 1; }
OUTDIR=$(realpath "$OUTDIR")
got=$(awk '$1 == "release" { print $2; exit }' "$MANIFEST")
[ "$got" = "$RELEASE" ] || { echo "lay_parts.sh: $MANIFEST is for vllm '${got:-?}', not $RELEASE" >&2; exit 1; }
git check-ignore -q .bundle-00/part-000 || { echo "lay_parts.sh: .bundle-NN is not git-ignored in $PWD" >&2; exit 1; }
total=$(awk '$1 == "parts" { print $2; exit }' "$MANIFEST")
[ "$total" -le 100 ] || { echo "lay_parts.sh: $total parts: more than .bundle-00 ... -99" >&2; exit 1; }

rm -rf .bundle-[0-9][0-9]
n=0
for part in $(awk '$1 == "part" { print $2 }' "$MANIFEST"); do
  d=$(printf '.bundle-%02d' "$n")
  mkdir "$d"
  ln "$OUTDIR/$part" "$d/" 2>/dev/null || cp "$OUTDIR/$part" "$d/"
  n=$((n + 1))
done
ln "$MANIFEST" .bundle-00/ 2>/dev/null || cp "$MANIFEST" .bundle-00/
echo "# $n part(s) of vllm $RELEASE laid out in .bundle-00 ... $(printf '.bundle-%02d' $((n - 1))); the calls:"
for i in $(seq 0 $((n - 1))); do
  d=$(printf '.bundle-%02d' "$i")
  echo "carry [\"$d\"]  bash tools/gpu_bundle/install.sh $RELEASE stash $d"
done
echo "carry [\".gpu\", \".gpu-whl\"]  RELEASE=$RELEASE bash bench/gpu_session.sh setup"
