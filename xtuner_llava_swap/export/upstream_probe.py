"""Load an official-format export with an upstream LLaVA repository's own loader.

Run as a script (``python -P upstream_probe.py REQUEST.json``) in a process whose
``PYTHONPATH`` is a checkout of haotian-liu/LLaVA or LLaVA-NeXT (both packages are named
``llava``). It imports neither this package nor xtuner: it is what a user of that
repository does, ``load_pretrained_model`` then ``tokenizer_image_token``,
``process_images`` and ``generate(images=...)``, and saves what :mod:`.upstream` compares
(the tensor comparison once per load, the rest per prompt case):

* the prompt ids and pixel values the upstream code made (several images: one
  ``process_images`` batch, which both checkouts' ``prepare_inputs_labels_for_multimodal``
  take one per ``<image>``, in order);
* fp32 logits over the prompt and the teacher-forced tokens, and greedy tokens;
* every tensor of the export's safetensors against the loaded model's ``state_dict``
  (cast to the dtype the loader chose: both load 16-bit), and the names the model did not
  take from the export.

The request (JSON) holds ``folder``, ``name`` (the folder's name, from which the loaders
choose the class), ``next`` (LLaVA-NeXT's signature), ``vision_tower`` (an override of
``mm_vision_tower`` or null), ``cases`` (each a ``prompt``, its ``images`` (files) and the
``forced`` tokens; the folder is loaded once for all), ``stop_ids``, ``max_new_tokens``
and ``output`` (where the list of results, one per case, goes).
"""
import functools
import json
import sys
from pathlib import Path

import torch


def _exported_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def _compare_tensors(model, exported: dict) -> dict:
    """Equal / differing / unused export tensors; rows dropped by the loader's resize."""
    state = model.state_dict()
    differ, unused, resized = [], [], {}
    for name, tensor in exported.items():
        if name not in state:
            unused.append(name)
            continue
        loaded = state[name]
        expected = tensor.to(loaded.dtype)
        if loaded.shape != expected.shape and loaded.shape[1:] == expected.shape[1:]:
            rows = min(loaded.shape[0], expected.shape[0])
            resized[name] = [int(expected.shape[0]), int(loaded.shape[0])]
            loaded, expected = loaded[:rows], expected[:rows]
        if loaded.shape != expected.shape or not torch.equal(loaded, expected):
            differ.append(name)
    tied = getattr(model.config, "tie_word_embeddings", False)
    extra = [n for n in state if n not in exported
             and not (tied and n == "lm_head.weight") and "rotary_emb" not in n]
    return {"compared": len(exported), "differ": differ, "unused": unused, "extra": extra,
            "resized_rows": resized, "loaded_dtype": str(next(iter(state.values())).dtype)}


def main(request_file: str) -> None:
    from PIL import Image

    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.mm_utils import process_images, tokenizer_image_token
    from llava.model.builder import load_pretrained_model

    request = json.loads(Path(request_file).read_text())
    folder = Path(request["folder"])
    tower = request["vision_tower"]
    if request["next"]:  # its default attention needs flash_attn; float32 drops into pdb
        kwargs = dict(torch_dtype="float16", attn_implementation="sdpa")
        if tower:
            kwargs["overwrite_config"] = {"mm_vision_tower": tower}
    else:
        kwargs = dict(device="cpu", **({"mm_vision_tower": tower} if tower else {}))
    tokenizer, model, image_processor, _ = load_pretrained_model(
        str(folder), None, request["name"], **kwargs)
    tensors = _compare_tensors(model, _exported_tensors(folder))
    model = model.float().eval()
    if not request["next"]:  # its forward() lacks the cache_position generate() passes
        forward = model.forward

        @functools.wraps(forward)
        def without_cache_position(*args, cache_position=None, **kw):
            return forward(*args, **kw)
        model.forward = without_cache_position

    results = []
    for case in request["cases"]:
        text = case["prompt"]
        if tokenizer.bos_token and text.startswith(tokenizer.bos_token):
            text = text[len(tokenizer.bos_token):]  # the upstream tokenizer call adds it
        ids = tokenizer_image_token(text, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")[None]
        images = [Image.open(file).convert("RGB") for file in case["images"]]
        pixels = process_images(images, image_processor, model.config)
        forced = torch.tensor([case["forced"]], dtype=torch.long)
        with torch.no_grad():
            logits = model(input_ids=torch.cat([ids, forced], 1), images=pixels).logits[0]
            tokens = model.generate(ids, images=pixels, do_sample=False, num_beams=1,
                                    max_new_tokens=request["max_new_tokens"],
                                    eos_token_id=request["stop_ids"],
                                    pad_token_id=tokenizer.pad_token_id or request["stop_ids"][0])
        results.append({"ids": ids[0].tolist(), "pixels": pixels.float(),
                        "logits": logits.float(), "tokens": tokens[0].tolist()})
    torch.save({"tensors": tensors, "cases": results}, request["output"])

if __name__ == "__main__":
    main(sys.argv[1])
