"""Train with xtuner's own train entry (`xtuner/tools/train.py`) and return its REAL exit status.

`xtuner train CFG` spawns `python .../xtuner/tools/train.py` and exits 0 even when the
training crashed; this runs the same `main()` in-process, after importing
`xtuner_llava_swap` (compatibility patches, plugin registration). Same arguments as
`xtuner train`: CONFIG [--work-dir DIR] [--resume PTH] [--deepspeed NAME|JSON]
[--cfg-options k=v ...] [--seed N].
"""
import xtuner_llava_swap  # noqa: F401  (must come before xtuner's train module)
from xtuner.tools.train import main

if __name__ == "__main__":
    main()
