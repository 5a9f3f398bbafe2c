#!/usr/bin/env bash
# Build the "newer stack" beside xtuner's pinned one (.venv): transformers 4.57 and a
# bitsandbytes that quantizes nf4 on a CPU (>= 0.49), so that the QLoRA configs really
# train in 4 bits here, and the export tests load the `hf` output with the newest
# transformers 4.x. xtuner 0.2.0 pins transformers==4.48.0 and bitsandbytes==0.45.0, so
# it is installed with --no-deps and the rest of its requirements are listed below (pip's
# resolver would otherwise refuse the pair); torchvision is left out as in .venv (the
# only wheel for torch 2.13 is a CUDA build), and so is transformers_stream_generator: it
# does not import on transformers 4.57 (BeamSearchScorer is gone), and only Qwen-7B's
# (first generation) remote code asks for it, so that model stays on xtuner's stack.
# CPU torch only (constraints file).
# Usage: tests/export/make_tf457_venv.sh [VENV_DIR]   (default: .venv-tf457 in the repository)
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${1:-$repo/.venv-tf457}"
python="${PYTHON:-python3.11}"
export PIP_CONSTRAINT="$repo/requirements/constraints-cpu.txt"  # torch==2.13.0 (CPU)
export DS_BUILD_OPS=0                                           # deepspeed: no op builds
"$python" -m venv --clear "$venv"   # a rebuild starts empty
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" torch==2.13.0 "transformers==4.57.6" "bitsandbytes==0.50.2" "peft==0.21.2" \
    accelerate "deepspeed==0.16.2" \
    `# xtuner 0.2.0's requirements, without its transformers/bitsandbytes pins, torchvision` \
    `# and transformers_stream_generator (see above)` \
    "mmengine==0.10.6" "datasets>=3.2.0,<4" einops loguru openpyxl scikit-image scipy \
    sentencepiece tiktoken \
    `# this package's own requirements (setup.cfg) that the list above does not bring` \
    "safetensors>=0.4.3" tqdm pillow "numpy<2.3" matplotlib protobuf
"${pip[@]}" --no-deps "xtuner==0.2.0"
"${pip[@]}" --no-deps -e "$repo"
"$venv/bin/python" -m xtuner_llava_swap install-startup
"$venv/bin/python" -c "
import bitsandbytes, peft, torch, transformers, xtuner
print('transformers', transformers.__version__, 'bitsandbytes', bitsandbytes.__version__,
      'peft', peft.__version__, 'torch', torch.__version__, 'xtuner', xtuner.__version__)"
