"""``python -m xtuner_llava_swap SUBCOMMAND``: the same command as ``xtuner-llava-swap``
(:mod:`xtuner_llava_swap.commands.main`)."""
import sys

from .commands.main import main

if __name__ == "__main__":
    sys.exit(main())
