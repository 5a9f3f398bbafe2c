"""Train with xtuner's own train entry (`xtuner/tools/train.py`) and return its REAL exit status.

Runs the same `main()` as `xtuner train CONFIG`, in-process, after importing
`xtuner_llava_swap` (compatibility patches, plugin registration). Same arguments:
CONFIG [--work-dir DIR] [--resume PTH] [--deepspeed NAME|JSON] [--cfg-options k=v ...]
[--seed N] [--launcher none|pytorch|slurm].

Several ranks: `torchrun --nproc_per_node N tools/train.py CONFIG --deepspeed deepspeed_zero2`.
Under torchrun (WORLD_SIZE > 1) `--launcher pytorch` is implied, as `xtuner train` adds it
when it launches torchrun; a rank that fails makes torchrun exit non-zero.
"""
import os
import sys

import xtuner_llava_swap  # noqa: F401  (must come before xtuner's train module)
from xtuner.tools.train import main

if __name__ == "__main__":
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "--launcher" not in sys.argv:
        sys.argv += ["--launcher", "pytorch"]
    main()
