"""Export an xtuner LLaVA checkpoint to Hugging Face or official LLaVA format.

    python tools/convert_to_hf.py CONFIG CHECKPOINT OUT_DIR [--format hf|llava] [--verify] ...

A thin wrapper over :func:`xtuner_llava_swap.export.cli.main` (``--help`` for all options).
"""
import sys

from xtuner_llava_swap.export.cli import main

if __name__ == "__main__":
    sys.exit(main())
