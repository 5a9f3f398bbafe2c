"""``--verify``: the exported folder must behave like xtuner's own model of the run.

The reference is xtuner's ``LLaVAModel`` built from CONFIG (fp32, unquantized base, LoRA
adapters live, not merged) with CHECKPOINT loaded (:func:`trained_model`, also what the
chat and eval tools load a run with). Both models get the same images and prompt, and
both generate through the inference room (:mod:`xtuner_llava_swap.inference`): the
reference through xtuner's own path (:class:`~xtuner_llava_swap.inference.generation.RunGenerator`:
pad-to-square with ``expand2square``, CONFIG's image processor, the prompt rendered as the
training data renders a first turn, :func:`xtuner_llava_swap.inference.prompt.render`,
``prepare_inputs_labels_for_multimodal``); the export through its own files (processor or
image processor, model class; ``HFGenerator`` / ``LlavaGenerator``), and check 1 compares
the ids the export's own chat template gives a user with the reference's.

Prompts checked: one image with :data:`VERIFY_PROMPT`; when the run trains with several
images per sample (its dataset's ``max_images`` > 1) also two images with
:data:`VERIFY_PROMPT_TWO_IMAGES` (placeholders in the text, kept in place), reported under
``several_images``. ``image=`` (one image or a list) checks that one prompt instead.
Checked for each prompt, in this order:

1. the export's token ids are the reference's with the image place expanded;
2. the export's pixel values equal the reference's;
3. fp32 logits at every position agree within ``atol`` (1e-4 relative to the logit
   scale for a float32 export; 2e-2 for 16-bit exports, whose weights were rounded);
4. greedy decoding gives the same tokens (``max_new_tokens``, the profile's stop ids). For
   16-bit exports, whose rounding can flip a near-tie of a random or undertrained model, the
   export is run teacher-forced on xtuner's greedy tokens and may differ only at steps
   where xtuner's own top two logits are within ``atol`` (reported as ``near_ties``).

Logits are compared over the prompt and the generated tokens (teacher-forced).

With ``upstream`` (``--upstream PATH``, see :mod:`.upstream`) an official-format folder
is also loaded by each upstream LLaVA checkout that has its model and tower classes (the
others are reported skipped, with the reason), pointed at the folder's own
``clip_vision_tower/`` when it has one (a SigLIP folder's tower is read by hub id from the
Hugging Face cache, as LLaVA-NeXT does), and checked the same way (1-4, with the 16-bit
tolerance: both loaders load float16; several images go to both checkouts as one
``process_images`` batch, which their ``prepare_inputs_labels_for_multimodal`` takes one per
``<image>`` in order), plus: every tensor of the export's safetensors equals the loaded
model's (none left unused; only the embedding rows past the tokenizer, which the loaders'
``resize_token_embeddings(len(tokenizer))`` drops, are not compared).

Any failure raises :class:`ExportError` with the numbers.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ExportError
from ..token_contract import IMAGE_TOKEN_INDEX

VERIFY_PROMPT = "Describe the image briefly."
VERIFY_PROMPT_TWO_IMAGES = "What differs between <image> and <image>?"


def uses_fast_tokenizer(folder: Path) -> bool:
    """Exports ship ``tokenizer.json`` only when the fast tokenizer gives the training ids."""
    return (Path(folder) / "tokenizer.json").is_file()


def default_image(number: int = 0):
    """A non-square test image (so padding to square is exercised); ``number`` > 0 gives
    other ones (other sizes and colours), for prompts with several images."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (96 - 24 * number, 56 + 16 * number), (250, 250, 240))
    draw = ImageDraw.Draw(image)
    draw.rectangle([8, 8, 40, 44], fill=(200 - 90 * number, 30 + 90 * number, 30))
    draw.ellipse([50 - 20 * number, 10, 88 - 20 * number, 48], fill=(30, 60, 200 - 90 * number))
    return image


def trained_model(run, checkpoint, trust_remote_code: bool = False, quantization=None):
    """xtuner's model of ``run`` (fp32, unquantized base, LoRA adapters live, not merged)
    with ``checkpoint`` (a :class:`~xtuner_llava_swap.checkpoint.TrainedCheckpoint`) loaded.
    ``quantization``: a ``BitsAndBytesConfig`` for the base LLM instead (chat's and eval's
    ``--load-in-4bit``)."""
    from xtuner.registry import BUILDER

    from .tokenizer import remote_code_allowed

    model_cfg = run.cfg.model.copy()
    model_cfg.pretrained_pth = None
    model_cfg.llm = model_cfg.llm.copy()
    model_cfg.llm.pop("quantization_config", None)
    model_cfg.llm.torch_dtype = torch.float32
    if quantization is not None:
        model_cfg.llm.quantization_config = quantization
        model_cfg.llm.torch_dtype = quantization.bnb_4bit_compute_dtype
    if model_cfg.llm.get("trust_remote_code") and not remote_code_allowed(run, trust_remote_code):
        raise ExportError("--verify builds the run's LLM, which needs remote code; pass "
                          "--trust-remote-code")
    model = BUILDER.build(model_cfg).eval()
    if quantization is None:
        model = model.float()
    state = {k: v.to(torch.float32) for k, v in checkpoint.tensors.items()}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a tensor of another shape: another model's checkpoint
        first = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line),
                     str(err).splitlines()[0])
        raise ExportError(f"{checkpoint.path}: not a checkpoint of {run.config_path}'s model "
                          f"({first}); give the CONFIG it was trained with") from None
    if result.unexpected_keys:
        raise ExportError(f"{checkpoint.path}: keys xtuner's LLaVAModel does not have: "
                          f"{result.unexpected_keys[:5]}")
    return model


def run_generator(run, model, tokenizer, system=None):
    """The inference room's generator over xtuner's ``model`` of ``run`` (its image
    preprocessing, its feature selection, its profile; ``system``: the run's unless given)."""
    from xtuner.registry import BUILDER

    from xtuner_llava_swap.inference.generation import RunGenerator
    from xtuner_llava_swap.training.llava_model import visual_features

    def features(model, pixels):
        return visual_features(model, pixels, run.drops_first_position)

    return RunGenerator(model, tokenizer, run.profile.template,
                        BUILDER.build(run.cfg.image_processor), run.pad_image_to_square,
                        features, system=run.system if system is None else system,
                        profile=run.profile)


def _reference_prompt(run, tokenizer, prompt: str, images: list):
    """The prompt of a one-turn training sample with ``images`` (the profile's template:
    default system, position rules), as the evaluation hook builds it."""
    from xtuner_llava_swap.inference.prompt import one_turn, render

    return render(tokenizer, run.profile.template, one_turn(prompt, images), run.system,
                  what="verify prompt")


def _messages(run, prompt: str, n_images: int) -> list:
    from xtuner_llava_swap.inference.prompt import user_text

    system = [{"role": "system", "content": run.system}] if run.system is not None else []
    return system + [{"role": "user", "content": user_text(prompt, n_images,
                                                           what="verify prompt")}]


def _generate_and_score(generator, prompt, max_new_tokens, forced=None):
    """Greedy tokens of ``prompt`` and the teacher-forced logits over the prompt and
    ``forced`` (the generated tokens when ``None``)."""
    tokens = list(generator.generate([prompt], max_new_tokens=max_new_tokens)[0].token_ids)
    return tokens, generator.logits(prompt, tokens if forced is None else forced)


@torch.no_grad()
def _reference(run, generator, images, prompt, max_new_tokens):
    rendered = _reference_prompt(run, generator.tokenizer, prompt, images)
    generated, logits = _generate_and_score(generator, rendered, max_new_tokens)
    pixels = generator.pixels(images)
    n_image = generator.features(generator.model, pixels).shape[1]
    return rendered.ids, pixels, logits, generated, n_image


def load_hf_folder(folder: Path, dtype=torch.float32, **model_kwargs):
    """``(processor, model)`` of a Hugging Face export, loaded as users load it."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    processor = AutoProcessor.from_pretrained(folder, use_fast=uses_fast_tokenizer(folder))
    model = LlavaForConditionalGeneration.from_pretrained(folder, torch_dtype=dtype,
                                                          **model_kwargs).eval()
    return processor, model


@torch.no_grad()
def _run_hf(run, loaded, images, prompt, max_new_tokens, forced):
    from xtuner_llava_swap.inference.generation import HFGenerator

    processor, model = loaded
    # the ids a user gets from the export's own chat template and processor
    text = processor.tokenizer.apply_chat_template(_messages(run, prompt, len(images)),
                                                   tokenize=False, add_generation_prompt=True)
    inputs = processor(images=images, text=text, return_tensors="pt", add_special_tokens=False)
    generator = HFGenerator(model, processor, run.profile.template, system=run.system)
    tokens, logits = _generate_and_score(
        generator, _reference_prompt(run, processor.tokenizer, prompt, images), max_new_tokens,
        forced)
    return (inputs["input_ids"][0].tolist(), inputs["pixel_values"], logits, tokens,
            model.config.image_token_index)


def load_llava_folder(folder: Path, dtype=torch.float32, **model_kwargs):
    """``(tokenizer, image_processor, model)`` of an official-layout export, loaded by the
    package's loader classes (:mod:`.loaders`)."""
    from transformers import AutoImageProcessor, AutoModelForCausalLM

    from . import loaders  # noqa: F401  (registers the llava_* classes)

    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=dtype,
                                                 **model_kwargs).eval()
    return _export_tokenizer(folder), AutoImageProcessor.from_pretrained(folder), model


@torch.no_grad()
def _run_llava(run, loaded, images, prompt, max_new_tokens, forced):
    from xtuner_llava_swap.export.loaders import process_images, tokenizer_image_token
    from xtuner_llava_swap.inference.generation import LlavaGenerator

    tokenizer, image_processor, model = loaded
    # the ids and pixels a user gets with LLaVA's own helpers
    text = tokenizer.apply_chat_template(_messages(run, prompt, len(images)), tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer_image_token(text, tokenizer)
    pixels = process_images(images, image_processor, model.config)
    generator = LlavaGenerator(model, tokenizer, image_processor, run.profile.template,
                               system=run.system)
    tokens, logits = _generate_and_score(
        generator, _reference_prompt(run, tokenizer, prompt, images), max_new_tokens, forced)
    return ids.tolist(), pixels, logits, tokens, None


def _cases(run, image, prompt) -> list:
    """``[(images, prompt)]`` to check (see the module docstring)."""
    if image is not None:
        from xtuner_llava_swap.inference.prompt import as_image_list

        images = as_image_list(image)
        default = VERIFY_PROMPT if len(images) == 1 else VERIFY_PROMPT_TWO_IMAGES
        return [(images, prompt or default)]
    cases = [([default_image()], prompt or VERIFY_PROMPT)]
    if run.max_images > 1:
        cases.append(([default_image(0), default_image(1)], VERIFY_PROMPT_TWO_IMAGES))
    return cases


def verify_export(run, checkpoint, folder, fmt: str, tokenizer, *, dtype=torch.float32,
                  trust_remote_code: bool = False, image=None, prompt: str | None = None,
                  max_new_tokens: int = 8, upstream=None) -> dict:
    """Compare the export in ``folder`` with xtuner's model of the run; return the numbers
    (those of the two-image prompt, when it runs, under ``several_images``)."""
    folder = Path(folder)
    cases = _cases(run, image, prompt)
    stop_ids = run.profile.stop_token_ids(tokenizer)
    generator = run_generator(run, trained_model(run, checkpoint, trust_remote_code), tokenizer)
    references = [_reference(run, generator, images, text, max_new_tokens)
                  for images, text in cases]
    del generator
    load, run_export = (load_hf_folder, _run_hf) if fmt == "hf" else (load_llava_folder,
                                                                       _run_llava)
    loaded = load(folder)
    reports = []
    for (images, text), (ref_ids, ref_pixels, ref_logits, ref_tokens, n_image) in zip(
            cases, references):
        ids, pixels, logits, tokens, image_token_index = run_export(
            run, loaded, images, text, max_new_tokens, ref_tokens)
        reports.append({"images": len(images), **_compare(
            "export" if len(images) == 1 else f"export, {len(images)} images", ids, pixels,
            logits, tokens, image_token_index, ref_ids, ref_pixels, ref_logits, ref_tokens,
            n_image, dtype == torch.float32)})
    del loaded
    if fmt == "llava":
        upstream_reports = (
            ["not run: give --upstream PATH (a LLaVA / LLaVA-NeXT clone)"] * len(cases)
            if upstream is None else
            _verify_upstream(run, folder, upstream, cases, references, stop_ids, max_new_tokens))
        for report, upstream_report in zip(reports, upstream_reports):
            report["upstream"] = upstream_report
    report = reports[0]
    if len(reports) > 1:
        report["several_images"] = reports[1]
    return report


def _compare(who, ids, pixels, logits, tokens, image_token_index, ref_ids, ref_pixels,
             ref_logits, ref_tokens, n_image, strict: bool) -> dict:
    """Checks 1-4 of the module docstring for one loaded model; the numbers, or raise."""
    expected_ids = []
    for token in ref_ids:
        if token == IMAGE_TOKEN_INDEX and image_token_index is not None:
            expected_ids += [image_token_index] * n_image
        else:
            expected_ids.append(token)
    if ids != expected_ids:
        raise ExportError(f"verify ({who}): the prompt ids differ from training's\n {who}: "
                          f"{ids}\n training: {expected_ids}")
    if pixels.shape != ref_pixels.shape or not torch.allclose(pixels, ref_pixels, atol=1e-6):
        raise ExportError(f"verify ({who}): the image preprocessing differs from training's")
    vocab = min(ref_logits.shape[-1], logits.shape[-1])
    if logits.shape[0] != ref_logits.shape[0]:
        raise ExportError(f"verify ({who}): {logits.shape[0]} positions, "
                          f"{ref_logits.shape[0]} in xtuner's model")
    ref_logits = ref_logits[:, :vocab]
    diff = (logits[:, :vocab] - ref_logits).abs().max().item()
    scale = ref_logits.abs().max().item()
    tolerance = (1e-4 if strict else 2e-2) * max(1.0, scale)
    near_ties = _greedy_disagreements(logits[:, :vocab], ref_logits, ref_tokens, tolerance)
    report = {"max_abs_logit_diff": diff, "logit_scale": scale, "tolerance": tolerance,
              "positions": int(ref_logits.shape[0]), "tokens": tokens,
              "reference_tokens": ref_tokens, "near_ties": near_ties}
    if diff > tolerance:
        raise ExportError(f"verify ({who}): logits differ by up to {diff:.3g} (tolerance "
                          f"{tolerance:.3g}, logit scale {scale:.3g})")
    if strict and tokens != ref_tokens:
        raise ExportError(f"verify ({who}): greedy decoding differs: {tokens}, xtuner "
                          f"{ref_tokens}")
    return report


def _verify_upstream(run, folder: Path, upstream, cases, references, stop_ids,
                     max_new_tokens) -> list:
    """Load ``folder`` with each applicable upstream checkout (once for all ``cases``);
    compare like the export. One ``{checkout: numbers}`` per case."""
    import json

    from . import upstream as upstream_loaders

    model_type = json.loads((folder / "config.json").read_text())["model_type"]
    tokenizer = _export_tokenizer(folder)
    requests = [(tokenizer.apply_chat_template(_messages(run, prompt, len(images)),
                                               tokenize=False, add_generation_prompt=True),
                 images, reference[3]) for (images, prompt), reference in zip(cases, references)]
    usable, skipped = upstream_loaders.applicable(upstream, model_type,
                                                  run.tower.llava_tower_class)
    reports = [dict(skipped) for _ in cases]
    for checkout in usable:
        tensors, results = upstream_loaders.probe_cases(
            checkout, folder, requests, stop_ids, max_new_tokens,
            vision_tower=upstream_loaders.tower_override(folder))
        if tensors["differ"] or tensors["unused"] or tensors["extra"]:
            raise ExportError(f"verify ({checkout.name}): the loaded model does not use the "
                              f"export's tensors as they are: differ {tensors['differ'][:5]}, "
                              f"unused {tensors['unused'][:5]}, not from the export "
                              f"{tensors['extra'][:5]}")
        for report, result, reference in zip(reports, results, references):
            numbers = _compare(checkout.name, result["ids"], result["pixels"], result["logits"],
                               result["tokens"], None, *reference, strict=False)
            report[checkout.name] = {**numbers, "tensors_compared": tensors["compared"],
                                     "loaded_dtype": tensors["loaded_dtype"],
                                     "resized_rows": tensors["resized_rows"]}
    return reports


def _export_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, use_fast=uses_fast_tokenizer(folder))


def _greedy_disagreements(logits, ref_logits, ref_tokens, tolerance) -> int:
    """Steps (teacher-forced on xtuner's greedy tokens) where the export's greedy choice
    differs; allowed only where xtuner's own top two are within ``tolerance`` (a near-tie
    that 16-bit rounding may flip), else :class:`ExportError`."""
    start = ref_logits.shape[0] - len(ref_tokens) - 1
    ties = 0
    for step, token in enumerate(ref_tokens):
        chosen = int(logits[start + step].argmax())
        if chosen == token:
            continue
        margin = float(ref_logits[start + step, token] - ref_logits[start + step, chosen])
        if margin > tolerance:
            raise ExportError(f"verify: at generated token {step} the export picks {chosen}, "
                              f"xtuner {token} (xtuner prefers it by {margin:.3g} > "
                              f"{tolerance:.3g})")
        ties += 1
    return ties
