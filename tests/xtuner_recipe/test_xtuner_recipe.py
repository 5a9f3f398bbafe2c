"""xtuner's own recipe after training on a plugin run (``LLaVASwapModel``, CLIP, the shipped
Qwen2.5 QLoRA config on tiny parts over the real Qwen2 tokenizer, trained by ``xtuner
train``): ``xtuner convert pth_to_hf`` in its three ``--save-format``s, ``xtuner convert
merge`` of the LLM adapter, ``xtuner chat`` and ``xtuner mmbench`` with the profile's
template registered under its name (``--prompt-template qwen2.5``), and the one line that
stops them on a SigLIP tower.

Numbers: the ``xtuner`` folder holds the checkpoint's trained tensors; ``huggingface`` and
``official`` equal the plugin's own ``hf`` and ``llava`` exports tensor for tensor; the
merged LLM equals the ``hf`` export's language model; the registered templates render
what training renders for every profile (text), and the training ids with the real
tokenizers; ``xtuner chat`` answers with the greedy tokens ``--verify`` gets from xtuner's
model on the training-format prompt; ``xtuner mmbench`` writes its result files.
"""
from __future__ import annotations

import base64
import io
import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support import FIXTURES, REPO, requires_fixtures, run_train, train_env

from xtuner_llava_swap.testing.tiny import TinyLLaVA

pytestmark = requires_fixtures

CONFIG = REPO / "configs" / "llava_qwen2_5_7b_instruct_qlora.py"
PROMPT = "Describe the image briefly."


def xtuner(*args, stdin: str | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """``xtuner ARGS`` in this environment (the startup hook imports the plugin there)."""
    return subprocess.run(["xtuner", *map(str, args)], input=stdin, capture_output=True,
                          text=True, cwd=cwd, env=train_env(), timeout=600)


def tensors(folder: Path) -> dict:
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


@pytest.fixture(scope="module")
def run(tiny_parts, tmp_path_factory):
    """The trained run: config, checkpoint, CLI options, parts, and the plugin's own exports."""
    from xtuner_llava_swap.export import convert

    _, finetune, images = tiny_parts("data")
    tiny = TinyLLaVA("qwen2", tiny_parts("qwen2"), tiny_parts("clip"), finetune, finetune, images,
                     uses_real_tokenizer=True)
    work = tmp_path_factory.mktemp("recipe-train")
    proc = run_train(CONFIG, work, tiny.cfg_options(pretrained_pth=None))
    checkpoint = sorted(work.glob("iter_*.pth"))[-1:]
    assert checkpoint, f"no checkpoint:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    options = {"llm_name_or_path": tiny.llm, "visual_encoder_name_or_path": tiny.visual_encoder,
               "pretrained_pth": None, "model.llm.quantization_config": None,
               "model.llm.torch_dtype": "float32"}
    root = tmp_path_factory.mktemp("recipe")
    image = root / "image.png"
    from PIL import Image

    Image.new("RGB", (56, 56), (200, 40, 30)).save(image)  # square: no padding question
    ours = {}
    for fmt in ("hf", "llava"):
        summary = convert(CONFIG, checkpoint[0], root / f"ours-{fmt}", fmt=fmt, dtype="float32",
                          cfg_options=options, progress=False, verify=(fmt == "hf"),
                          verify_image=Image.open(image) if fmt == "hf" else None)
        ours[fmt] = (root / f"ours-{fmt}", summary)
    return dict(checkpoint=checkpoint[0], root=root, tiny=tiny, image=image, ours=ours,
                cli=["--cfg-options", *(f"{k}={'None' if v is None else v}"
                                        for k, v in options.items())])


@pytest.fixture(scope="module")
def pth_to_hf(run):
    """``xtuner convert pth_to_hf`` in each --save-format (``--fp32``) -> {format: folder}."""
    folders = {}
    for fmt in ("xtuner", "huggingface", "official"):
        out = run["root"] / f"pth_to_hf-{fmt}"
        proc = xtuner("convert", "pth_to_hf", CONFIG, run["checkpoint"], out, "--fp32",
                      "--save-format", fmt, *run["cli"])
        assert proc.returncode == 0, f"{fmt}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        folders[fmt] = out
    return folders


def test_pth_to_hf_xtuner_format_holds_the_trained_tensors(run, pth_to_hf):
    out = pth_to_hf["xtuner"]
    state = torch.load(run["checkpoint"], weights_only=False, map_location="cpu")["state_dict"]
    projector = tensors(out / "projector")
    assert projector and all(torch.equal(projector[k], state["projector." + k]) for k in projector)
    adapter = tensors(out / "llm_adapter")
    trained = {k: v for k, v in state.items() if k.startswith("llm.") and "lora_" in k}
    assert len(adapter) == len(trained) > 0
    for name, value in adapter.items():  # PEFT drops the adapter name: ...lora_A.weight
        key = next(k for k in trained if k.endswith(name.split("base_model.model.", 1)[1]))
        assert torch.equal(value, trained[key])
    assert (out / "visual_encoder_adapter" / "adapter_config.json").is_file()
    assert (out / "xtuner_config.py").is_file()


@pytest.mark.parametrize("fmt, ours", [("huggingface", "hf"), ("official", "llava")])
def test_pth_to_hf_huggingface_and_official_are_the_plugins_exports(run, pth_to_hf, fmt, ours):
    out, (reference, _) = pth_to_hf[fmt], run["ours"][ours]
    theirs, mine = tensors(out), tensors(reference)
    assert theirs.keys() == mine.keys() and len(mine) > 10
    assert all(torch.equal(theirs[k], mine[k]) for k in mine)
    assert json.loads((out / "config.json").read_text()) == json.loads(
        (reference / "config.json").read_text())
    assert (out / "chat_template.jinja").read_text() == (reference / "chat_template.jinja").read_text()


def test_merge_gives_the_exports_language_model(run, pth_to_hf):
    merged = run["root"] / "merged"
    proc = xtuner("convert", "merge", run["tiny"].llm, pth_to_hf["xtuner"] / "llm_adapter", merged)
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights = tensors(merged)
    exported = {k.split("language_model.", 1)[1]: v
                for k, v in tensors(run["ours"]["hf"][0]).items() if k.startswith("language_model.")}
    assert weights.keys() == exported.keys()
    for name, value in weights.items():  # xtuner merges in float16
        assert value.dtype == torch.float16
        assert torch.allclose(value.float(), exported[name], atol=2e-3, rtol=2e-3), name
    assert (merged / "tokenizer_config.json").is_file()


def test_chat_answers_with_the_verified_tokens(run, pth_to_hf):
    from transformers import AutoTokenizer

    tokens = run["ours"]["hf"][1]["verify"]["tokens"]
    proc = xtuner("chat", run["tiny"].llm, "--visual-encoder", run["tiny"].visual_encoder,
                  "--llava", pth_to_hf["xtuner"], "--prompt-template", "qwen2.5",
                  "--image", run["image"], "--torch-dtype", "fp32", "--temperature", "0",
                  "--no-streamer", "--max-new-tokens", len(tokens),
                  stdin=f"{PROMPT}\n\nEXIT\n\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = AutoTokenizer.from_pretrained(run["tiny"].llm).decode(tokens)
    assert answer.strip() and f">>> {answer}" in proc.stdout, (answer, proc.stdout[-1500:])
    assert "Log: Exit!" in proc.stdout


def mmbench_tsv(path: Path, image: Path) -> Path:
    import pandas as pd

    encoded = base64.b64encode(image.read_bytes()).decode()
    rows = [dict(index=0, question="What colour is the picture?", hint=None, A="red",
                 B="green", C="blue", D="grey", answer="A", category="coarse_perception",
                 **{"l2-category": "attribute"}, image=encoded),
            dict(index=1, question="What shape fills it?", hint="It has four sides.",
                 A="a circle", B="a square", answer="B", category="coarse_perception",
                 **{"l2-category": "attribute"}, image="0")]  # a short image: row 0's
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


def test_mmbench_writes_its_results(run, pth_to_hf, tmp_path):
    import pandas as pd

    work = tmp_path / "mmbench"
    proc = xtuner("mmbench", run["tiny"].llm, "--llava", pth_to_hf["xtuner"], "--visual-encoder",
                  run["tiny"].visual_encoder, "--prompt-template", "qwen2.5", "--data-path",
                  mmbench_tsv(tmp_path / "mmbench.tsv", run["image"]), "--work-dir", work,
                  "--torch-dtype", "fp32", "--max-new-tokens", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = pd.read_excel(work / "mmbench_result.xlsx")
    assert list(results["index"]) == [0, 1] and results["prediction"].notna().all()
    scores = json.loads((work / "mmbench_result.json").read_text())
    assert 0.0 <= scores["Average"] <= 1.0


def test_chat_on_a_siglip_tower_says_so_in_one_line(run, tmp_path):
    from xtuner_llava_swap.testing.tiny import build_tiny_tower

    siglip = build_tiny_tower("siglip-so400m-384", tmp_path / "siglip")
    proc = xtuner("chat", run["tiny"].llm, "--visual-encoder", siglip, "--llava", tmp_path,
                  "--prompt-template", "qwen2.5", "--image", run["image"], stdin="EXIT\n\n")
    assert proc.returncode != 0
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("xtuner chat: xtuner chat / xtuner mmbench load the vision encoder "
                           "as CLIP") and "siglip-so400m-384" in line
    assert "`xtuner-llava-swap chat` / `xtuner-llava-swap eval`" in line


# ------------------------------------------------- the registered templates, in-process
def chat_prompt(template: dict, system: str | None, text: str) -> str:
    """What ``xtuner chat`` renders on turn 1 (``system``: its --system-template text)."""
    head = template["SYSTEM"].format(system=system, round=1, bot_name="BOT") \
        if system is not None and "SYSTEM" in template else ""
    return head + template["INSTRUCTION"].format(input=text, round=1, bot_name="BOT")


def test_registered_templates_render_the_training_format_for_every_profile():
    import xtuner_llava_swap  # noqa: F401  (registers the templates with xtuner.utils)
    from xtuner.utils import PROMPT_TEMPLATE, SYSTEM_TEMPLATE

    from xtuner_llava_swap.profiles import PROFILES
    from xtuner_llava_swap.xtuner_tools import MMBENCH, xtuner_template

    text = f"<image>\n{PROMPT}"
    for name, profile in PROFILES.items():
        expected = profile.render([{"role": "user", "content": text}], add_generation_prompt=True)
        system = SYSTEM_TEMPLATE.get(name)
        system = system.format(round=1, bot_name="BOT") if system is not None else None
        assert chat_prompt(PROMPT_TEMPLATE[name], system, text) == expected, name
        assert chat_prompt(xtuner_template(profile, MMBENCH), None, text) == expected, name
        assert PROMPT_TEMPLATE[name]["STOP_WORDS"] == list(profile.stop_words)


@pytest.mark.parametrize("name, folder", [("qwen2.5", "qwen2-1.5b-instruct-finetune-export"),
                                          ("qwen3", "qwen3")])
def test_registered_template_gives_the_training_ids(name, folder):
    """Encoded as xtuner chat / mmbench encode (``tokenizer.encode`` of the text around
    ``<image>``, -200 between), the prompt is the training ids up to the first reply."""
    from transformers import AutoTokenizer
    from xtuner.registry import BUILDER
    from xtuner.utils import PROMPT_TEMPLATE, SYSTEM_TEMPLATE

    from xtuner_llava_swap.training.tokenizers import encode_llava_conversation, tokenizer_dict

    sample = {"image": "x.png", "conversations": [
        {"from": "human", "value": f"<image>\n{PROMPT}"}, {"from": "gpt", "value": "Red."}]}
    encoded = encode_llava_conversation(sample, BUILDER.build(tokenizer_dict(
        name, FIXTURES / folder)), name)
    first_label = next(i for i, label in enumerate(encoded["labels"]) if label != -100)
    tokenizer = AutoTokenizer.from_pretrained(FIXTURES / folder, trust_remote_code=True)
    system = SYSTEM_TEMPLATE.get(name)
    text = chat_prompt(PROMPT_TEMPLATE[name], system, f"<image>\n{PROMPT}")
    before, after = text.split("<image>")
    ids = tokenizer.encode(before) + [-200] + tokenizer.encode(after, add_special_tokens=False)
    assert ids == encoded["input_ids"][:first_label]
