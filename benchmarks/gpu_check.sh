#!/usr/bin/env bash
# Run on a lent GPU machine, in the checkout's root, after benchmarks/gpu_prepare.sh here (carry .whl and
# .gpu_data): installs the carried wheels beside the machine's torch, runs benchmarks/gpu_check.py and leaves
# gpu_check.json (rewritten after every modality) and gpu_check.log in $OUT. Extra arguments go to gpu_check.py.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
python3 -m benchmarks.gpu_check --data .gpu_data --out "$out/gpu_check.json" "$@" 2>"$out/gpu_check.log"
rc=$?
tail -n 20 "$out/gpu_check.log" >&2
exit $rc
