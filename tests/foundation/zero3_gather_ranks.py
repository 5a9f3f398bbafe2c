"""Run by torchrun on several CPU ranks (gloo): does ZeRO-3's GatheredParameters hand out
exactly the values rank 0 wrote?

A stack of layers with weights and biases is partitioned by ``deepspeed.zero.Init``. Each
round rank 0 writes new values inside ``GatheredParameters(..., modifier_rank=0)`` (what
transformers does when it loads a checkpoint under ZeRO-3); then every rank gathers them
again and compares. Prints ``ROUNDS <n> MISMATCHES <m>`` per rank.

``python zero3_gather_ranks.py patched|unpatched [rounds]``: ``patched`` imports
xtuner_llava_swap first, so its compatibility patches apply.
"""
import sys

import torch

if sys.argv[1] == "patched":
    import xtuner_llava_swap  # noqa: F401  (applies compat's patches as modules load)
import deepspeed
import torch.distributed as dist

ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 20
ZERO3 = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}

deepspeed.init_distributed(dist_backend="gloo")
rank = dist.get_rank()
with deepspeed.zero.Init(config_dict_or_path=ZERO3):
    # odd sizes: the last rank's partition is padded
    model = torch.nn.Sequential(*[torch.nn.Linear(257, 129) for _ in range(6)])
params = list(model.parameters())

mismatches = 0
for round_ in range(ROUNDS):
    expected = [torch.full(p.ds_shape, float(round_ * 100 + i)) for i, p in enumerate(params)]
    with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
        if rank == 0:
            for p, value in zip(params, expected):
                p.data.copy_(value)
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        mismatches += sum(not torch.equal(p.data, value) for p, value in zip(params, expected))
print(f"rank {rank} patched {sys.argv[1] == 'patched'}: ROUNDS {ROUNDS} MISMATCHES {mismatches}",
      flush=True)
dist.barrier()
dist.destroy_process_group()  # a rank that exits with the group alive may abort at shutdown
