"""Chat with a run (CONFIG + checkpoint) or an export, one-shot or interactive.

    python tools/chat.py MODEL [--config CONFIG] [--prompt TEXT [--image PATH ...]]

A thin wrapper over :func:`xtuner_llava_swap.inference.chat_cli.main` (``--help`` for all options).
"""
import sys

from xtuner_llava_swap.inference.chat_cli import main

if __name__ == "__main__":
    sys.exit(main())
