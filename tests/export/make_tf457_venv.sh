#!/usr/bin/env bash
# Build the second environment the export tests load the `hf` output with: the newest
# transformers 4.x (4.57) beside xtuner's pinned 4.48. CPU torch only (torch==2.13.0 is a
# local CPU wheel here; an unpinned torch would pull CUDA packages).
# Usage: tests/export/make_tf457_venv.sh [VENV_DIR]   (default: .venv-tf457 in the repository)
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${1:-$repo/.venv-tf457}"
python="${PYTHON:-python3.11}"
"$python" -m venv "$venv"
constraints="$(mktemp)"
echo "torch==2.13.0" > "$constraints"
"$venv/bin/pip" install --quiet -c "$constraints" torch==2.13.0 "transformers>=4.57,<4.58" \
    safetensors pillow sentencepiece tiktoken protobuf
rm -f "$constraints"
"$venv/bin/python" -c "import transformers, torch; print('transformers', transformers.__version__, 'torch', torch.__version__)"
