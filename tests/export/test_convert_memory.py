"""The converter's peak memory: at most 1.5 output shards above the interpreter baseline,
whatever the size of the model and of its LoRA checkpoint (here LoRA r=512, the rank of
the shipped QLoRA configs, which makes the checkpoint larger than the model).

Measured by the kernel in a fresh process: a tiny conversion first (imports, tokenizers:
the fixed costs), then the resident set is the baseline and the peak is reset
(``/proc/self/clear_refs``), then the synthetic run is converted and ``VmHWM`` read.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from support import REPO
from xtuner_llava_swap.testing.synthetic_run import (Shape, build_synthetic_run,
                                                     write_lora_checkpoint)

SHARD_BYTES = 40_000_000
# 167 MB of fp16 weights (5 shards) and a 330 MB fp32 LoRA checkpoint
SHAPE = Shape(layers=16, hidden=512, intermediate=1376, heads=8, vocab=32000)
LORA_RANK = 512

MEASURE = textwrap.dedent("""
    import json, sys
    from xtuner_llava_swap.export import convert

    def status():
        with open("/proc/self/status") as f:
            return {l.split(":")[0]: int(l.split()[1]) * 1024 for l in f
                    if l.startswith(("VmRSS", "VmHWM"))}

    warm_config, warm_checkpoint, config, checkpoint, out, shard = sys.argv[1:]
    convert(warm_config, warm_checkpoint, out + "-warm", dtype="float16",
            max_shard_size=int(shard), progress=False)
    baseline = status()["VmRSS"]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    convert(config, checkpoint, out, dtype="float16", max_shard_size=int(shard),
            progress=False)
    print(json.dumps({"baseline": baseline, "peak": status()["VmHWM"]}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")
def test_peak_memory_stays_under_one_and_a_half_shards(tmp_path):
    warm = build_synthetic_run(tmp_path / "warm", Shape(layers=1, hidden=64, intermediate=128,
                                                        heads=4, vocab=1024),
                               family="qwen2", real_tokenizer=False)
    run = build_synthetic_run(tmp_path / "run", SHAPE, family="qwen2", real_tokenizer=False)
    (tmp_path / "work_dir").mkdir()  # OUT_DIR may not lie inside the run's work dir
    checkpoint = write_lora_checkpoint(run, LORA_RANK, tmp_path / "work_dir" / "iter_1.pth")
    assert checkpoint.stat().st_size > SHAPE.fp16_bytes() > 4 * SHARD_BYTES
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE, str(warm.config(LORA_RANK)),
         str(write_lora_checkpoint(warm, LORA_RANK, tmp_path / "warm.pth")),
         str(run.config(LORA_RANK)), str(checkpoint), str(tmp_path / "out"), str(SHARD_BYTES)],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    memory = json.loads(proc.stdout.strip().splitlines()[-1])
    above = memory["peak"] - memory["baseline"]
    assert above <= 1.5 * SHARD_BYTES, f"{above / 1e6:.0f} MB above the baseline"
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 5
    assert index["metadata"]["total_size"] > SHAPE.fp16_bytes()  # + CLIP and projector
