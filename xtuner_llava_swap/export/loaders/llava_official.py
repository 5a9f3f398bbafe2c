"""Official-LLaVA model classes (``llava_qwen``, ``llava_llama``) that plain transformers
can load once this package is imported: no LLaVA / LLaVA-NeXT repository needed.

The layout is the one of haotian-liu/LLaVA (``LlavaLlamaForCausalLM``) and LLaVA-NeXT
(``LlavaQwenForCausalLM``): the text model's own keys, ``model.mm_projector.0/2.*``
(``mlp2x_gelu``) and ``model.vision_tower.vision_tower.vision_model.*``, with the ``mm_*``
config fields. The config also carries ``vision_config`` (the hyper-parameters of the whole
encoder ``mm_vision_tower`` names, CLIP or SigLIP) so the tower is built without
downloading ``mm_vision_tower``. The tower is held as the official tower class holds it
(the tower profile's :meth:`~xtuner_llava_swap.towers.VisionTower.llava_held_config`:
LLaVA-NeXT's SigLIP tower without its last encoder layer and pooling head), and its
features are the hidden states of ``mm_vision_select_layer`` counted on the whole encoder
(-2: for SigLIP the held tower's last), without position 0 when the select feature is
``patch``.

Prompts follow the official convention: the image place is the id ``IMAGE_TOKEN_INDEX``
(-200) in ``input_ids`` (see :func:`tokenizer_image_token`), and ``images`` are the pixel
values of :func:`process_images` (pad-to-square with the mean colour when the config's
``image_aspect_ratio`` is ``"pad"``)::

    import xtuner_llava_swap  # registers llava_qwen / llava_llama
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = tokenizer_image_token(prompt, tokenizer).unsqueeze(0)
    out = model.generate(ids, images=process_images([image], image_processor, model.config),
                         max_new_tokens=64)   # the new tokens only
"""
from __future__ import annotations

import torch
import transformers
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from ...token_contract import IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from ...towers import tower_for


class OfficialVisionTower(nn.Module):
    """Holds the vision model under ``vision_tower`` (the official key names), as the
    official tower class of its encoder does."""

    def __init__(self, vision_config: dict):
        super().__init__()
        tower = tower_for(vision_config.get("model_type"))
        held = tower.llava_held_config(vision_config)
        self.removed_layers = vision_config["num_hidden_layers"] - held["num_hidden_layers"]
        model_class = getattr(transformers, tower.model_class)
        self.vision_tower = model_class(model_class.config_class.from_dict(held))

    def forward(self, pixel_values: torch.Tensor, select_layer: int, select_feature: str):
        # a layer counted from the end of the whole encoder, on the held (shorter) one
        index = select_layer + self.removed_layers if select_layer < 0 else select_layer
        hidden = self.vision_tower(pixel_values.to(self.vision_tower.dtype),
                                   output_hidden_states=True).hidden_states[index]
        return hidden[:, 1:] if select_feature == "patch" else hidden


def _projector(config) -> nn.Sequential:
    if config.mm_projector_type != "mlp2x_gelu":
        raise ValueError(f"mm_projector_type {config.mm_projector_type!r}: only mlp2x_gelu")
    return nn.Sequential(nn.Linear(config.mm_hidden_size, config.hidden_size), nn.GELU(),
                         nn.Linear(config.hidden_size, config.hidden_size))


class LlavaOfficialMixin:
    """Vision tower + projector on ``self.model`` and the ``images=`` path of the LM."""

    def _add_vision_modules(self, config) -> None:
        self.model.vision_tower = OfficialVisionTower(config.vision_config)
        self.model.mm_projector = _projector(config)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        features = self.model.vision_tower(images, self.config.mm_vision_select_layer,
                                           self.config.mm_vision_select_feature)
        return self.model.mm_projector(features.to(self.model.mm_projector[0].weight.dtype))

    def embed_with_images(self, input_ids: torch.Tensor, images: torch.Tensor,
                          attention_mask: torch.Tensor | None = None):
        """``(inputs_embeds, attention_mask)``: each -200 replaced by its image's features.

        Images are taken in order, one per -200; rows are left-padded to the same length.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        features = self.encode_images(images)
        embed = self.get_input_embeddings()
        rows, image_index = [], 0
        for ids, mask in zip(input_ids, attention_mask.bool()):
            ids = ids[mask]
            pieces, start = [], 0
            for place in (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist():
                pieces += [embed(ids[start:place]), features[image_index]]
                image_index, start = image_index + 1, place + 1
            pieces.append(embed(ids[start:]))
            rows.append(torch.cat(pieces, dim=0))
        if image_index != len(features):
            raise ValueError(f"{len(features)} images for {image_index} {IMAGE_TOKEN} places")
        length = max(r.shape[0] for r in rows)
        embeds = rows[0].new_zeros(len(rows), length, rows[0].shape[-1])
        mask = torch.zeros(len(rows), length, dtype=torch.long, device=embeds.device)
        for i, row in enumerate(rows):
            embeds[i, length - row.shape[0]:] = row
            mask[i, length - row.shape[0]:] = 1
        return embeds, mask

    def forward(self, input_ids=None, attention_mask=None, images=None, inputs_embeds=None,
                **kwargs):
        if images is not None and input_ids is not None and (input_ids == IMAGE_TOKEN_INDEX).any():
            inputs_embeds, attention_mask = self.embed_with_images(input_ids, images,
                                                                   attention_mask)
            input_ids = None
        return super().forward(input_ids=input_ids, attention_mask=attention_mask,
                               inputs_embeds=inputs_embeds, **kwargs)

    @torch.no_grad()
    def generate(self, inputs=None, images=None, attention_mask=None, **kwargs):
        """With ``images``: generate from the image-filled embeddings (returns new tokens)."""
        if images is not None:
            embeds, attention_mask = self.embed_with_images(inputs, images, attention_mask)
            return super().generate(inputs_embeds=embeds, attention_mask=attention_mask,
                                    **kwargs)
        return super().generate(inputs, attention_mask=attention_mask, **kwargs)


def _init_mm_fields(config, vision_config, mm_hidden_size, mm_vision_tower, kwargs):
    config.vision_config = (vision_config.to_dict() if hasattr(vision_config, "to_dict")
                            else dict(vision_config or {}))
    defaults = dict(mm_vision_tower=mm_vision_tower, mm_hidden_size=mm_hidden_size,
                    mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
                    mm_vision_select_feature="patch", image_aspect_ratio="pad",
                    mm_use_im_start_end=False, mm_use_im_patch_token=False, use_mm_proj=True,
                    tune_mm_mlp_adapter=False, mm_patch_merge_type="flat")
    for name, value in defaults.items():
        setattr(config, name, kwargs.pop(name, value))


class LlavaQwenConfig(Qwen2Config):
    """LLaVA-NeXT's ``llava_qwen``: a Qwen2 config with the ``mm_*`` fields."""

    model_type = "llava_qwen"

    def __init__(self, vision_config=None, mm_hidden_size=None, mm_vision_tower=None, **kwargs):
        rest = dict(kwargs)
        _init_mm_fields(self, vision_config, mm_hidden_size, mm_vision_tower, rest)
        super().__init__(**rest)


class LlavaLlamaConfig(LlamaConfig):
    """LLaVA's ``llava_llama``: a Llama config with the ``mm_*`` fields."""

    model_type = "llava_llama"

    def __init__(self, vision_config=None, mm_hidden_size=None, mm_vision_tower=None, **kwargs):
        rest = dict(kwargs)
        _init_mm_fields(self, vision_config, mm_hidden_size, mm_vision_tower, rest)
        super().__init__(**rest)


class LlavaQwenForCausalLM(LlavaOfficialMixin, Qwen2ForCausalLM):
    config_class = LlavaQwenConfig

    def __init__(self, config):
        super().__init__(config)
        self._add_vision_modules(config)
        self.post_init()


class LlavaLlamaForCausalLM(LlavaOfficialMixin, LlamaForCausalLM):
    config_class = LlavaLlamaConfig

    def __init__(self, config):
        super().__init__(config)
        self._add_vision_modules(config)
        self.post_init()


def tokenizer_image_token(prompt: str, tokenizer, add_special_tokens: bool = False) -> torch.Tensor:
    """Token ids of ``prompt`` with each ``<image>`` as ``IMAGE_TOKEN_INDEX`` (like xtuner)."""
    ids = []
    for index, chunk in enumerate(prompt.split(IMAGE_TOKEN)):
        if index:
            ids.append(IMAGE_TOKEN_INDEX)
        ids += tokenizer.encode(chunk, add_special_tokens=add_special_tokens and index == 0)
    return torch.tensor(ids, dtype=torch.long)


def expand_to_square(image, background):
    """Pad a PIL image to a square, centred, with ``background`` (xtuner / LLaVA ``pad``)."""
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = Image.new(image.mode, (side, side), background)
    result.paste(image, ((side - width) // 2, (side - height) // 2))
    return result


def process_images(images, image_processor, config) -> torch.Tensor:
    """Pixel values as training made them: pad to square with the mean colour if ``pad``."""
    if getattr(config, "image_aspect_ratio", None) == "pad":
        background = tuple(int(x * 255) for x in image_processor.image_mean)
        images = [expand_to_square(image.convert("RGB"), background) for image in images]
    return image_processor(images, return_tensors="pt")["pixel_values"]
