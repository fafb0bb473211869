#!/usr/bin/env bash
# Run here, before a session's GPU check: what benchmarks/gpu_check.sh needs on a lent GPU machine. That machine
# has Python 3.12 with torch, lightning, numpy, pillow, scikit-learn, tqdm, pyyaml, safetensors, tokenizers and
# matplotlib, but no network and none of arseq's other dependencies, and ../shared does not travel with the
# checkout. So: wheels of those dependencies (the versions of this venv) in .whl/, and the shared data files in
# .gpu_data/, both ignored by git, both to be carried:
#
#   bash benchmarks/gpu_prepare.sh
#   device run: command "bash benchmarks/gpu_check.sh", carry [".whl", ".gpu_data"], timeout_s 560
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python}"
packages=(music21 chardet jsonpickle more-itertools webcolors biopython jsonargparse docstring-parser typeshed-client
  typing-extensions symusic platformdirs pySmartDL starlette uvicorn prometheus-client)
pinned=()
for name in "${packages[@]}"; do
  pinned+=("$name==$("$python" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")")
done
rm -rf .whl && mkdir -p .whl
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pinned[@]}"
mkdir -p .gpu_data
cp ../shared/data/proteins_train.fasta ../shared/data/proteins_val.fasta ../shared/data/tinyshakespeare.txt .gpu_data/
du -sh .whl .gpu_data
