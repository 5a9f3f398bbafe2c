"""Chat and eval on the checkpoint forms a real training leaves besides ``iter_N.pth``: the
DeepSpeed directory of a 2-rank ZeRO-2 ``xtuner train`` (the export tests' run, trained once
per session) and the folder ``xtuner convert pth_to_hf`` writes from it, each as MODEL with
the run's CONFIG, answer exactly as the same run's ``hf`` export."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from export.conftest import QLORA_CONFIG
from support import REPO, requires_fixtures

from xtuner_llava_swap.inference import chat_cli, eval_cli


def _pth_to_hf(run, out: Path) -> Path:
    """``xtuner convert pth_to_hf`` (xtuner's format: adapters + projector) of ``run``."""
    options = [f"{k}={v}" for k, v in run.cfg_options.items()]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run([sys.executable, "-m", "xtuner.tools.model_converters.pth_to_hf",
                    str(run.config), str(run.checkpoint), str(out), "--fp32",
                    "--safe-serialization", "--cfg-options", *options,
                    "model.llm.quantization_config=None", "model.llm.torch_dtype=float32"],
                   check=True, cwd=REPO, env=env, capture_output=True)
    return out


@requires_fixtures
def test_chat_and_eval_on_a_deepspeed_directory_and_a_pth_to_hf_folder(
        zero2_2rank_run, pictures, tmp_path, capsys):
    from xtuner_llava_swap.export.convert import convert

    run = zero2_2rank_run
    assert run.config == QLORA_CONFIG and run.checkpoint.is_dir()
    assert len(list(run.checkpoint.glob("*optim_states.pt"))) == 2  # one file per rank
    folder = _pth_to_hf(run, tmp_path / "pth_to_hf")
    assert (folder / "llm_adapter" / "adapter_config.json").is_file()
    export = tmp_path / "hf"
    convert(run.config, run.checkpoint, export, cfg_options=run.cfg_options, fmt="hf",
            dtype="float32", progress=False)
    config = ["--config", str(run.config), "--cfg-options",
              *[f"{k}={v}" for k, v in run.cfg_options.items()]]

    answers = {}
    for model in (run.checkpoint, folder, export):
        out = io.StringIO()
        status = chat_cli.main([str(model), "--prompt", "Describe it.", "--image",
                                str(pictures[0]), "--max-new-tokens", "6",
                                *(config if model != export else [])],
                               stdin=io.StringIO(""), stdout=out)
        assert status == 0, capsys.readouterr().err
        answers[model.name] = out.getvalue()
    assert answers[run.checkpoint.name].strip(), answers
    assert len(set(answers.values())) == 1, answers

    data = tmp_path / "vqa.jsonl"
    data.write_text("".join(json.dumps({"image": str(p), "question": "What colour?",
                                        "answer": "red", "category": "colour"}) + "\n"
                            for p in pictures))
    status = eval_cli.main([str(run.checkpoint), "--data", str(data), "--work-dir",
                            str(tmp_path / "eval"), "--batch-size", "3", "--max-new-tokens", "4",
                            "--no-progress", "--compare", str(folder), str(export), *config])
    assert status == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "eval" / "result.json").read_text())
    assert (result["n_items"], result["n_scored"]) == (3, 3)
    assert [(c["identical_share"], c["n_compared"]) for c in result["compare"]] == [(1.0, 3)] * 2
    predictions = [json.loads(line) for line in
                   (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert all(p["prediction"] for p in predictions)
