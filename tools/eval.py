"""Score a run (CONFIG + checkpoint) or an export on MMBench (TSV) or a VQA JSONL file.

    python tools/eval.py MODEL [--config CONFIG] --data FILE --work-dir OUT [--compare MODEL2 ...]

A thin wrapper over :func:`xtuner_llava_swap.inference.eval_cli.main` (``--help`` for all options).
"""
import sys

from xtuner_llava_swap.inference.eval_cli import main

if __name__ == "__main__":
    sys.exit(main())
