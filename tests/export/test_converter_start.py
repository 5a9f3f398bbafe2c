"""The converter's start: a conversion without ``--verify`` imports no xtuner, and deepspeed
only for a DeepSpeed input; the bos ids it computes itself equal xtuner's.

The conversions run for real in a fresh interpreter (``cli.main``), which then prints the
xtuner and deepspeed modules it holds.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from support import FIXTURES, REPO, requires_fixtures
from xtuner_llava_swap.testing.synthetic_run import (Shape, build_synthetic_run,
                                                     write_lora_checkpoint,
                                                     write_zero3_checkpoint)

HEAVY = textwrap.dedent("""
    import json, sys
    from xtuner_llava_swap.export.cli import main

    def heavy():
        return sorted({m.split(".")[0] for m in sys.modules} & {"xtuner", "deepspeed"})

    seen = []
    for argv in json.loads(sys.argv[1]):
        try:
            code = main(argv)
        except SystemExit as done:  # --help
            code = done.code
        seen.append({"code": code, "heavy": heavy()})
    print(json.dumps(seen))
""")


def test_conversion_imports_no_xtuner_and_deepspeed_only_for_deepspeed_input(tmp_path):
    run = build_synthetic_run(tmp_path / "run", Shape(layers=1, hidden=64, intermediate=128,
                                                      heads=4, vocab=1024),
                              profile="qwen2.5", real_tokenizer=False)
    (tmp_path / "work_dir").mkdir()
    lora = write_lora_checkpoint(run, 8, tmp_path / "work_dir" / "iter_1.pth")
    zero3 = write_zero3_checkpoint(run, 2, tmp_path / "work_dir" / "iter_2.pth")
    argvs = [["--help"],
             [str(run.config(8)), str(lora), str(tmp_path / "lora-hf"), "--no-progress"],
             ["check", str(tmp_path / "lora-hf")],
             [str(run.config(None)), str(zero3), str(tmp_path / "zero3-hf"), "--no-progress"]]
    proc = subprocess.run([sys.executable, "-c", HEAVY, json.dumps(argvs)], capture_output=True,
                          text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    help_, lora_export, check, zero3_export = json.loads(proc.stdout.strip().splitlines()[-1])
    assert help_ == {"code": 0, "heavy": []}
    assert lora_export == {"code": 0, "heavy": []}
    assert check == {"code": 0, "heavy": []}
    assert zero3_export == {"code": 0, "heavy": ["deepspeed"]}  # its files pickle DeepSpeed types
    for out in ("lora-hf", "zero3-hf"):
        index = json.loads((tmp_path / out / "model.safetensors.index.json").read_text())
        assert any(k.startswith("language_model.") for k in index["weight_map"])


def _fixture_tokenizers():
    """The real tokenizers, built as a run's CONFIG builds them (profile tokens injected)."""
    from xtuner_llava_swap.training.tokenizers import build_tokenizer

    found = {}
    for folder, profile, options in (
            ("qwen2-1.5b-instruct-finetune-export", "qwen2", {}),
            ("qwen2-1.5b-instruct-finetune-export", "qwen2", {"use_fast": False}),
            ("qwen3", "qwen2.5", {}), ("llama-2", "vicuna-v1.5", {}),
            ("llava-1.5-7b-hf", "vicuna-v1.5", {}), ("qwen-7b", "qwen", {})):
        tokenizer = build_tokenizer(FIXTURES / folder, profile, check_contract=False, **options)
        found[f"{folder}:{type(tokenizer).__name__}"] = tokenizer
    return found


@requires_fixtures
def test_training_bos_ids_equal_xtuners_on_real_tokenizers():
    import xtuner_llava_swap  # noqa: F401  (compat: xtuner's bos None -> no bos)
    from xtuner.dataset.utils import get_bos_eos_token_ids

    from xtuner_llava_swap.training.tokenizers import training_bos_ids

    tokenizers = _fixture_tokenizers()
    kinds = {name.split(":")[1] for name in tokenizers}
    assert {"Qwen2TokenizerFast", "Qwen2Tokenizer", "LlamaTokenizer", "QWenTokenizer"} <= kinds
    seen = set()
    for name, tokenizer in tokenizers.items():
        bos, _ = get_bos_eos_token_ids(tokenizer)
        ours = training_bos_ids(tokenizer)
        assert ours == list(bos), name
        seen.add(tuple(ours))
    assert {(), (1,)} <= seen  # Qwen: no bos; Llama-2 / LLaVA-1.5: <s>

