"""The vision tower type and the registry that holds one per supported encoder.

A tower is data, the counterpart of an LLM profile: what changes when another vision
encoder sits in front of the projector. The model and image processor classes, whether
the encoder prepends a class token (then the features drop position 0, LLaVA's ``patch``
selection; SigLIP has none and keeps every position), the tokens one image takes, the
layer whose hidden states are used, the pad-to-square colour (the processor's mean), LoRA
targets, and the export facts of both formats. Tower folders (``towers/<name>/``) create
:class:`VisionTower` objects and :func:`register_tower` them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

# xtuner 0.2.0's `chat` and `mmbench` build the encoder and processor with these classes and
# drop position 0 of the features, whatever the folder holds
XTUNER_TOOLS_TOWER_CLASSES = ("CLIPVisionModel", "CLIPImageProcessor")


@dataclass(frozen=True)
class VisionTower:
    """One vision encoder as LLaVA uses it.

    Attributes:
        name: the tower's name (``clip-vit-large-336``...).
        family: its folder's name (``clip``, ``siglip``).
        hf_example: the hub id of the real encoder.
        model_class / processor_class: transformers class names of the vision model and
            its image processor.
        vision_model_type: ``model_type`` of the vision config (the ``hf`` export's
            ``vision_config``).
        image_size / patch_size: the square input side and the patch side, in pixels.
        class_token: True when position 0 of the hidden states is a class token.
        image_mean: the processor's normalisation mean (the pad-to-square colour).
        select_layer: index of the hidden states the projector reads (LLaVA: -2).
        lora_target_modules: the linear layers a LoRA of the tower targets.
        llava_name_word: the word the official loaders look for in ``mm_vision_tower`` to
            choose this tower's class.
        build_tiny: ``(out folder, image_size, patch_size)`` saves a tiny random model of
            the real class and its image processor (the tower folder's ``tiny.py``).
        llava_tower_class: the official loaders' class for this tower (``CLIPVisionTower``,
            ``SigLipVisionTower``).
        llava_loads_by_name: True when that class loads the encoder from ``mm_vision_tower``
            as a hub id only (LLaVA-NeXT builds a CLIP tower for any existing path): the
            official folder then names the hub id and carries no tower sub-folder.
        llava_removed_layers: last encoder layers that class deletes after loading.
        llava_held_overrides: ``(field, value)`` changes of the vision config that describe
            the rest of what that class deletes (SigLIP: the pooling head).
        llava_tokens_per_image: the positions that class accepts (None: any); LLaVA-NeXT's
            SigLIP tower asserts 729, i.e. 384 px at patch 14.
    """

    name: str
    family: str
    hf_example: str
    model_class: str
    processor_class: str
    vision_model_type: str
    image_size: int
    patch_size: int
    class_token: bool
    image_mean: tuple
    select_layer: int = -2
    lora_target_modules: tuple = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
    llava_name_word: str = ""
    build_tiny: Callable | None = None
    llava_tower_class: str | None = None
    llava_loads_by_name: bool = False
    llava_removed_layers: int = 0
    llava_held_overrides: tuple = ()
    llava_tokens_per_image: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "image_mean", tuple(self.image_mean))
        object.__setattr__(self, "lora_target_modules", tuple(self.lora_target_modules))
        object.__setattr__(self, "llava_held_overrides", tuple(self.llava_held_overrides))

    @property
    def tokens_per_image(self) -> int:
        """LLM positions one image takes: every patch (a class token is dropped); the patch
        convolution has stride ``patch_size`` and no padding (384 / 14 gives 27 x 27)."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def drops_first_position(self) -> bool:
        """Whether the features drop position 0 (the class token)."""
        return self.class_token

    @property
    def xtuner_tools_refusal(self) -> str | None:
        """None when xtuner's own ``chat`` / ``mmbench`` load this tower as training used it
        (:data:`XTUNER_TOOLS_TOWER_CLASSES`, a class token dropped), else the one line that
        says they cannot and names the plugin's tools."""
        classes = (self.model_class, self.processor_class)
        if classes == XTUNER_TOOLS_TOWER_CLASSES and self.class_token:
            return None
        return (f"xtuner chat / xtuner mmbench load the vision encoder as CLIP "
                f"({XTUNER_TOOLS_TOWER_CLASSES[0]}, position 0 dropped); this run's tower is "
                f"{self.name} ({self.model_class}): use `xtuner-llava-swap chat` / "
                "`xtuner-llava-swap eval`, or export with `--save-format huggingface`")

    @property
    def hf_select_strategy(self) -> str:
        """``vision_feature_select_strategy`` of a Hugging Face LLaVA export."""
        return "default" if self.class_token else "full"

    @property
    def pad_colour(self) -> tuple:
        """The pad-to-square background, the processor's mean as 0-255 RGB."""
        return tuple(int(m * 255) for m in self.image_mean)

    @property
    def llava_select_layers(self) -> tuple | None:
        """The select layers the official format can express for this tower: any (None),
        unless its class deletes the last encoder layers and takes the last remaining
        hidden state (LLaVA-NeXT's SigLIP tower: the whole encoder's -2)."""
        return (-(self.llava_removed_layers + 1),) if self.llava_removed_layers else None

    @property
    def llava_select_feature(self) -> str:
        """``mm_vision_select_feature`` of an official export: ``patch`` drops the class
        token; ``full`` keeps every position (what SGLang sets for SigLIP itself)."""
        return "patch" if self.class_token else "full"

    def llava_held_config(self, vision_config: dict) -> dict:
        """The vision config of the encoder as the official tower class holds it, from the
        config of the whole encoder (the one ``mm_vision_tower`` names)."""
        held = {**vision_config, **dict(self.llava_held_overrides)}
        held["num_hidden_layers"] = vision_config["num_hidden_layers"] - self.llava_removed_layers
        return held

    def llava_size_refusal(self, image_size: int, patch_size: int) -> str | None:
        """Why the official tower class cannot take an encoder of this size, or None."""
        tokens = (image_size // patch_size) ** 2
        if self.llava_tokens_per_image in (None, tokens):
            return None
        return (f"the official {self.llava_tower_class} takes {self.llava_tokens_per_image} "
                f"positions per image; this {self.family} encoder ({image_size} px, patch "
                f"{patch_size}) gives {tokens}: use --format hf")

    def llava_select_layer_refusal(self, select_layer: int) -> str | None:
        """Why the official format cannot express ``select_layer`` for this tower, or None."""
        if self.llava_select_layers is None or select_layer in self.llava_select_layers:
            return None
        return (f"the official LLaVA loaders build the {self.family} tower with select layer "
                f"{' or '.join(map(str, self.llava_select_layers))} only (LLaVA-NeXT removes "
                f"the last encoder layer itself); this run uses {select_layer}: use --format hf")


class TowerRegistry(Mapping):
    """Name -> :class:`VisionTower`; registering a taken name is an error."""

    def __init__(self):
        self._towers: dict[str, VisionTower] = {}

    def register(self, tower: VisionTower) -> VisionTower:
        if tower.name in self._towers:
            raise ValueError(f"vision tower {tower.name!r} is already registered")
        self._towers[tower.name] = tower
        return tower

    def __getitem__(self, name: str) -> VisionTower:
        try:
            return self._towers[name]
        except KeyError:
            raise KeyError(f"unknown vision tower {name!r}; known towers: "
                           f"{', '.join(self._towers)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._towers)

    def __len__(self) -> int:
        return len(self._towers)


TOWERS = TowerRegistry()


def register_tower(tower: VisionTower) -> VisionTower:
    """Add ``tower`` to :data:`TOWERS` (each tower folder calls this once per variant)."""
    return TOWERS.register(tower)


def get_tower(name) -> VisionTower:
    """The tower registered as ``name`` (a :class:`VisionTower` is returned as is)."""
    return name if isinstance(name, VisionTower) else TOWERS[name]


def tower_for(model_type: str | None, name=None) -> VisionTower:
    """The tower named ``name`` (checked against the encoder's ``model_type``), or else the
    first registered tower of that vision ``model_type``."""
    if name is not None:
        tower = get_tower(name)
        if tower.vision_model_type != model_type:
            raise ValueError(f"vision_tower={tower.name!r} is a {tower.vision_model_type} tower, "
                             f"but the visual encoder is a {model_type}")
        return tower
    for tower in TOWERS.values():
        if tower.vision_model_type == model_type:
            return tower
    raise ValueError(f"no vision tower profile has model_type {model_type!r} (known: "
                     f"{', '.join(TOWERS)}); pass vision_tower=<name>")
