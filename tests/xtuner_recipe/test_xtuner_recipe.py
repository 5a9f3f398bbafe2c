"""xtuner's own recipe after training on a plugin run (``LLaVASwapModel``, CLIP, the shipped
Qwen2.5 QLoRA config on tiny parts over the real Qwen2 tokenizer; its ``iter_N.pth`` built
in-process as the export tests build theirs): ``xtuner convert pth_to_hf`` in its three ``--save-format``s, ``xtuner convert
merge`` of the LLM adapter, ``xtuner chat`` and ``xtuner mmbench`` with the profile's
template registered under its name (``--prompt-template qwen2.5``), and the one line that
stops them on a SigLIP tower; ``to_hf`` (what ``pth_to_hf`` calls) on SigLIP runs, in
``huggingface`` and, at LLaVA-NeXT's SigLIP geometry, ``official``.

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
import logging
import re
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from export.conftest import build_inprocess_checkpoint
from support import FIXTURES, REPO, requires_fixtures, train_env

pytestmark = requires_fixtures

CONFIG = REPO / "configs" / "llava_qwen2_5_7b_instruct_qlora.py"
PROMPT = "Describe the image briefly."


def xtuner(*args, stdin: str | None = None) -> subprocess.Popen:
    """Start ``xtuner ARGS`` in this environment (the startup hook imports the plugin
    there); the commands of one step run side by side (each is mostly its start-up)."""
    process = subprocess.Popen(["xtuner", *map(str, args)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=REPO, env=train_env())
    process.stdin_text = stdin
    return process


def finish(processes: dict) -> dict:
    """``{name: CompletedProcess}`` of the started ``processes``."""
    done = {}
    for name, process in processes.items():
        out, err = process.communicate(process.stdin_text, timeout=600)
        done[name] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return done


def tensors(folder: Path) -> dict:
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


@pytest.fixture(scope="module")
def run(tiny_parts, tmp_path_factory):
    """The run (an ``iter_N.pth`` of CONFIG's ``LLaVASwapModel`` on the tiny parts, trained
    weights moved off their init), its CLI options, and the plugin's own exports of it."""
    from PIL import Image

    from xtuner_llava_swap.export import convert

    root = tmp_path_factory.mktemp("recipe")
    llm, clip = tiny_parts("qwen2"), tiny_parts("clip")
    options = {"llm_name_or_path": llm, "visual_encoder_name_or_path": clip,
               "pretrained_pth": None, "model.llm.quantization_config": None,
               "model.llm.torch_dtype": "float32"}
    (root / "run").mkdir()
    checkpoint = build_inprocess_checkpoint(CONFIG, options, root / "run" / "iter_1.pth")
    image = root / "image.png"
    Image.new("RGB", (56, 56), (200, 40, 30)).save(image)  # square: no padding question
    ours = {}
    for fmt in ("hf", "llava"):  # (the official loaders take the class from the folder name)
        out = root / f"ours-llava-qwen-{fmt}"
        summary = convert(CONFIG, checkpoint, out, fmt=fmt, dtype="float32",
                          cfg_options=options, progress=False, verify=(fmt == "hf"),
                          verify_image=Image.open(image) if fmt == "hf" else None)
        ours[fmt] = (out, summary)
    return dict(checkpoint=checkpoint, root=root, llm=llm, clip=clip, image=image, ours=ours,
                cli=["--cfg-options", *(f"{k}={'None' if v is None else v}"
                                        for k, v in options.items())])


@pytest.fixture(scope="module")
def pth_to_hf(run):
    """``xtuner convert pth_to_hf`` in each --save-format (``--fp32``) -> {format: folder}."""
    folders = {fmt: run["root"] / f"pth_to_hf-llava-qwen-{fmt}"
               for fmt in ("xtuner", "huggingface", "official")}
    done = finish({fmt: xtuner("convert", "pth_to_hf", CONFIG, run["checkpoint"], out, "--fp32",
                               "--safe-serialization", "--save-format", fmt, *run["cli"])
                   for fmt, out in folders.items()})
    for fmt, proc in done.items():
        assert proc.returncode == 0, f"{fmt}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return folders


@pytest.fixture(scope="module")
def tools(run, pth_to_hf, tmp_path_factory):
    """``xtuner convert merge``, ``xtuner chat``, ``xtuner mmbench`` on the ``xtuner``
    folder, and ``xtuner chat`` on a SigLIP tower, side by side -> {name: (process, folder)}."""
    from xtuner_llava_swap.testing.tiny import build_tiny_tower

    root = tmp_path_factory.mktemp("recipe-tools")
    tokens = run["ours"]["hf"][1]["verify"]["tokens"]
    siglip = build_tiny_tower("siglip-so400m-384", root / "siglip")
    folders = {"merge": root / "merged", "mmbench": root / "mmbench", "chat": None,
               "siglip": None}
    llava = ("--llava", pth_to_hf["xtuner"], "--visual-encoder", run["clip"],
             "--prompt-template", "qwen2.5", "--torch-dtype", "fp32")
    done = finish({
        "merge": xtuner("convert", "merge", run["llm"], pth_to_hf["xtuner"] / "llm_adapter",
                        folders["merge"], "--safe-serialization"),
        "chat": xtuner("chat", run["llm"], *llava, "--image", run["image"], "--temperature", "0",
                       "--no-streamer", "--max-new-tokens", len(tokens),
                       stdin=f"{PROMPT}\n\nEXIT\n\n"),
        "mmbench": xtuner("mmbench", run["llm"], *llava, "--data-path",
                          mmbench_tsv(root / "mmbench.tsv", run["image"]), "--work-dir",
                          folders["mmbench"], "--max-new-tokens", "4"),
        "siglip": xtuner("chat", run["llm"], "--visual-encoder", siglip, "--llava", root,
                         "--prompt-template", "qwen2.5", "--image", run["image"],
                         stdin="EXIT\n\n")})
    return {name: (proc, folders[name]) for name, proc in done.items()}


def test_pth_to_hf_xtuner_format_holds_the_trained_tensors(run, pth_to_hf):
    out = pth_to_hf["xtuner"]
    state = torch.load(run["checkpoint"], weights_only=False, map_location="cpu")["state_dict"]
    projector = tensors(out / "projector")
    assert projector and all(torch.equal(projector[k], state["projector." + k]) for k in projector)
    adapter = tensors(out / "llm_adapter")
    trained = {k: v for k, v in state.items() if k.startswith("llm.") and "lora_" in k}
    assert len(adapter) == len(trained) > 0
    for name, value in adapter.items():  # PEFT drops the adapter's name: ...lora_A.weight
        key = "llm." + re.sub(r"\.(lora_[AB])\.weight$", r".\1.default.weight", name)
        assert torch.equal(value, trained[key]), name
    assert (out / "visual_encoder_adapter" / "adapter_config.json").is_file()
    assert (out / "xtuner_config.py").is_file()


@pytest.mark.parametrize("fmt, ours", [("huggingface", "hf"), ("official", "llava")])
def test_pth_to_hf_huggingface_and_official_are_the_plugins_exports(run, pth_to_hf, fmt, ours):
    out, (reference, _) = pth_to_hf[fmt], run["ours"][ours]
    theirs, mine = tensors(out), tensors(reference)
    assert theirs.keys() == mine.keys() and len(mine) > 10
    assert all(torch.equal(theirs[k], mine[k]) for k in mine)
    config, expected = (json.loads((folder / "config.json").read_text())
                        for folder in (out, reference))
    if fmt == "official":  # the tower folder each export carries
        assert config.pop("mm_vision_tower") == str(out / "clip_vision_tower")
        expected.pop("mm_vision_tower")
    assert config == expected
    assert (out / "chat_template.jinja").read_text() == (reference / "chat_template.jinja").read_text()


def test_merge_gives_the_exports_language_model(run, tools):
    proc, merged = tools["merge"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights = tensors(merged)
    exported = {k.split("language_model.", 1)[1]: v
                for k, v in tensors(run["ours"]["hf"][0]).items() if k.startswith("language_model.")}
    assert weights.keys() == exported.keys()
    for name, value in weights.items():  # xtuner merges in float16
        assert value.dtype == torch.float16
        assert torch.allclose(value.float(), exported[name], atol=2e-3, rtol=2e-3), name
    assert (merged / "tokenizer_config.json").is_file()


def test_chat_answers_with_the_verified_tokens(run, tools):
    from transformers import AutoTokenizer

    proc, _ = tools["chat"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    tokens = run["ours"]["hf"][1]["verify"]["tokens"]
    answer = AutoTokenizer.from_pretrained(run["llm"]).decode(tokens)
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


def test_mmbench_writes_its_results(tools):
    import pandas as pd

    proc, work = tools["mmbench"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    [results_dir] = work.iterdir()  # mmbench writes into WORK_DIR/<timestamp>/
    results = pd.read_excel(results_dir / "mmbench_result.xlsx")
    assert list(results["index"]) == [0, 1] and results["prediction"].notna().all()
    scores = json.loads((results_dir / "mmbench_result.json").read_text())
    assert 0.0 <= scores["Average"] <= 1.0


def test_chat_on_a_siglip_tower_says_so_in_one_line(tools):
    proc, _ = tools["siglip"]
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


# ------------------------------------- LLaVASwapModel.to_hf on a SigLIP run, in-process
def siglip_run(tiny_parts, tmp_path, siglip):
    """A SigLIP run of another config (Qwen-7B's QLoRA config swapped to Qwen2.5, tower
    ``siglip``): its cfg-options, ``.pth`` and the model xtuner's pth_to_hf builds for it
    (the ``.pth`` loaded; the LLM unquantized)."""
    from export.conftest import QLORA_CONFIG, swap_options, tower_options
    from xtuner.registry import BUILDER

    from xtuner_llava_swap.export.run_config import load_training_run

    options = {**swap_options("qwen2.5", tiny_parts("qwen2"), siglip),
               **tower_options("siglip-so400m-384")}
    (tmp_path / "run").mkdir()
    checkpoint = build_inprocess_checkpoint(QLORA_CONFIG, options, tmp_path / "run" / "iter_1.pth")
    cfg = load_training_run(QLORA_CONFIG, options).cfg
    cfg.model.llm.pop("quantization_config", None)
    model = BUILDER.build(cfg.model)
    state = torch.load(checkpoint, weights_only=False)["state_dict"]
    assert not model.load_state_dict(state, strict=False).unexpected_keys
    return options, checkpoint, cfg, model


def test_to_hf_on_a_siglip_run(tiny_parts, tmp_path):
    """What ``pth_to_hf`` calls, on a SigLIP run: ``huggingface`` is the plugin's ``hf``
    export of the same ``.pth``; ``xtuner`` writes xtuner's folder and the line that names
    the plugin's tools."""
    from export.conftest import QLORA_CONFIG
    from mmengine.logging import MMLogger

    from xtuner_llava_swap.export import convert
    from xtuner_llava_swap.testing.tiny import build_tiny_tower

    tower = "siglip-so400m-384"
    options, checkpoint, cfg, model = siglip_run(tiny_parts, tmp_path,
                                                 build_tiny_tower(tower, tmp_path / "siglip"))
    model.to_hf(cfg=cfg, save_dir=str(tmp_path / "theirs"), fp32=True, save_format="huggingface")
    convert(QLORA_CONFIG, checkpoint, tmp_path / "ours", dtype="float32", cfg_options=options,
            progress=False)
    theirs, ours = tensors(tmp_path / "theirs"), tensors(tmp_path / "ours")
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in ours)
    # the line goes to mmengine's current logger, whose stream handler holds the stdout of
    # the test that created it: read the logger itself
    logged = io.StringIO()
    handler = logging.StreamHandler(logged)
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        model.to_hf(cfg=cfg, save_dir=str(tmp_path / "xtuner"), save_format="xtuner")
    finally:
        logger.removeHandler(handler)
    assert (tmp_path / "xtuner" / "projector").is_dir()
    assert (f"this run's tower is {tower} (SiglipVisionModel): use `xtuner-llava-swap chat` / "
            "`xtuner-llava-swap eval`") in logged.getvalue()


def test_to_hf_official_on_a_siglip_run(tiny_parts, tmp_path):
    """``--save-format official`` on a SigLIP run at the geometry LLaVA-NeXT's
    SigLipVisionTower asserts (384 px, patch 14: 729 positions; select layer -2). xtuner's
    pth_to_hf has no option for the tower's hub id: the exporter reads it from the base
    tower's ``config.json`` (``_name_or_path``, as a downloaded tower records it). The folder
    equals the plugin's ``--format llava --vision-tower-id`` export of the same ``.pth``."""
    from export.conftest import QLORA_CONFIG

    from xtuner_llava_swap.export import convert
    from xtuner_llava_swap.testing.tiny import build_tiny_tower

    tower, hub_id = "siglip-so400m-384", "google/siglip-so400m-patch14-384"
    siglip = build_tiny_tower(tower, tmp_path / "siglip", image_size=384)
    config_file = siglip / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()),
                                       "_name_or_path": hub_id}))
    options, checkpoint, cfg, model = siglip_run(tiny_parts, tmp_path, siglip)
    assert model.visual_select_layer == -2
    theirs, ours = tmp_path / "theirs-llava-qwen", tmp_path / "ours-llava-qwen"
    model.to_hf(cfg=cfg, save_dir=str(theirs), fp32=True, save_format="official")
    convert(QLORA_CONFIG, checkpoint, ours, fmt="llava", dtype="float32", cfg_options=options,
            vision_tower_id=hub_id, progress=False)
    written, expected = tensors(theirs), tensors(ours)
    assert written.keys() == expected.keys() and len(expected) > 10
    assert all(torch.equal(written[k], expected[k]) for k in expected)
    config = json.loads((theirs / "config.json").read_text())
    assert config == json.loads((ours / "config.json").read_text())
    assert (config["mm_vision_tower"], config["mm_vision_select_layer"]) == (hub_id, -2)
    assert config["vision_config"]["model_type"] == "siglip_vision_model"
    assert not (theirs / "clip_vision_tower").exists()  # LLaVA-NeXT reads SigLIP by hub id
