"""Test hook: rank 1 raises after its first training iteration; rank 0 carries on.

Added to a config by ``tests/foundation/test_multirank.py`` to check that a crash in ONE
rank (while the others wait in a collective) still ends the run with a non-zero status.
"""
from __future__ import annotations

from mmengine.dist import get_rank
from mmengine.hooks import Hook


class CrashInRankOneHook(Hook):
    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if get_rank() == 1:
            raise RuntimeError("rank 1 crashes on purpose (CrashInRankOneHook)")
