"""Serving-readiness report (`xtuner-llava-swap-convert check OUT_DIR`): a fresh export of
each format passes every demand; a copy with one demand broken fails exactly that one."""
from __future__ import annotations

import json
import shutil

import pytest

from support import requires_fixtures

from xtuner_llava_swap.export import convert
from xtuner_llava_swap.export.serving import check_folder


@pytest.fixture(scope="module")
def exports(inprocess_run, tmp_path_factory):
    """``{"hf": folder, "llava": folder}`` of one tiny Qwen2.5 run (untied), and its stop ids."""
    run = inprocess_run("qwen2.5", "qwen2")
    root = tmp_path_factory.mktemp("serving")
    folders = {}
    for fmt in ("hf", "llava"):
        folders[fmt] = root / f"llava-qwen-{fmt}"
        convert(run.config, run.checkpoint, folders[fmt], cfg_options=run.cfg_options, fmt=fmt,
                dtype="float16", progress=False)
    return folders


def _edit_json(folder, name, change):
    path = folder / name
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _drop_chat_template(folder):
    _edit_json(folder, "tokenizer_config.json", lambda d: d.pop("chat_template", None))
    for name in ("chat_template.json", "chat_template.jinja"):
        (folder / name).unlink(missing_ok=True)


BREAKS = {  # (format, demand starts with) -> how a copy is broken
    ("hf", "text_config.architectures"):
        lambda f: _edit_json(f, "config.json", lambda d: d["text_config"].pop("architectures")),
    ("hf", "tie_word_embeddings"):
        lambda f: _edit_json(f, "config.json", lambda d: d.update(tie_word_embeddings=True)),
    ("hf", "image_token_index"):
        lambda f: _edit_json(f, "config.json", lambda d: d.update(
            image_token_index=d["text_config"]["vocab_size"])),
    ("hf", "processor_config.json"):
        lambda f: _edit_json(f, "processor_config.json",
                             lambda d: d.pop("num_additional_image_tokens")),
    ("hf", "chat template"): _drop_chat_template,
    ("hf", "generation_config.json"):
        lambda f: _edit_json(f, "generation_config.json", lambda d: d.update(eos_token_id=[0])),
    ("llava", "architectures"):
        lambda f: _edit_json(f, "config.json", lambda d: d.update(architectures=["LlavaForCausalLM"])),
    ("llava", "preprocessor_config.json"): lambda f: (f / "preprocessor_config.json").unlink(),
    ("llava", "mm_vision_tower"):
        lambda f: _edit_json(f, "config.json", lambda d: d.update(mm_vision_tower="/models/vit-l")),
    ("llava", "chat template"): _drop_chat_template,
    ("llava", "generation_config.json"):
        lambda f: _edit_json(f, "generation_config.json", lambda d: d.update(eos_token_id=2)),
}


def _stop_ids(folder):
    from xtuner_llava_swap.export.serving import folder_tokenizer
    from xtuner_llava_swap.profiles import get_profile

    return get_profile("qwen2.5").stop_token_ids(folder_tokenizer(folder))


@requires_fixtures
@pytest.mark.parametrize("fmt", ["hf", "llava"])
def test_fresh_exports_are_ready(exports, fmt):
    report = check_folder(exports[fmt], _stop_ids(exports[fmt]))
    assert report["ready"], report
    assert report["server"] == {"hf": "vLLM", "llava": "SGLang"}[fmt]
    assert len(report["demands"]) == sum(1 for f, _ in BREAKS if f == fmt)


@requires_fixtures
@pytest.mark.parametrize("fmt,demand", sorted(BREAKS), ids=[f"{f}-{d}" for f, d in sorted(BREAKS)])
def test_each_broken_demand_fails_alone(exports, fmt, demand, tmp_path):
    folder = shutil.copytree(exports[fmt], tmp_path / exports[fmt].name)
    BREAKS[fmt, demand](folder)
    report = check_folder(folder, _stop_ids(folder))
    failed = [d for d in report["demands"] if not d["ok"]]
    assert not report["ready"]
    assert [d["name"][:len(demand)] for d in failed] == [demand], failed
    assert failed[0]["fix"]  # says what to change


@requires_fixtures
def test_check_command_line(exports, tmp_path, capsys):
    from xtuner_llava_swap.export.cli import main

    assert main(["check", str(exports["hf"]), "--profile", "qwen2.5"]) == 0
    ready = capsys.readouterr().out
    assert "for vLLM): ready" in ready and "FAIL" not in ready
    broken = shutil.copytree(exports["llava"], tmp_path / "llava-qwen-broken")
    BREAKS["llava", "mm_vision_tower"](broken)
    assert main(["check", str(broken)]) == 1
    failing = capsys.readouterr().out
    assert "FAIL mm_vision_tower names clip or siglip" in failing
    assert "--vision-tower-id" in failing
