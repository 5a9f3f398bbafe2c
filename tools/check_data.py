"""Preflight check of LLaVA training data, before a long run: ``xtuner-llava-swap check-data``.

    python tools/check_data.py CONFIG [--cfg-options k=v ...] [--out DIR]
    python tools/check_data.py --data FILE --tokenizer FOLDER --profile NAME ...

A thin wrapper over :func:`xtuner_llava_swap.commands.check_data.main` (``--help`` for all
options).
"""
import sys

from xtuner_llava_swap.commands.check_data import main

if __name__ == "__main__":
    sys.exit(main())
