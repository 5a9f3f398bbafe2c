"""The LLM family type and the registry that holds one per family folder.

A family is what the weights and files of a model line are: the Hugging Face text
``model_type`` an export writes, the official LLaVA class it maps to (or why there is
none), how its checkpoint names and ``config.json`` become the export's text model, how a
remote-code tokenizer becomes a plain-transformers one, the key patterns that recognise
its weights, and the recipe of its tiny test model. Profiles (chat formats) belong to a
family; everything below ``export/`` and ``testing/`` asks the family, never its name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Iterator, Mapping


@dataclass(frozen=True)
class LLMFamily:
    """One model line's export facts and tiny-model recipe.

    Attributes:
        name: the family folder's name.
        hf_text_model_type: ``model_type`` of the text config in an ``hf`` export.
        official_llava_class: the official LLaVA class (``LlavaQwenForCausalLM``...), or
            None; then ``no_official_llava`` says why ``--format llava`` is refused.
        weight_table: checkpoint name pattern -> export name(s) (``{n}`` is a layer index,
            a tuple target splits the tensor along dim 0); None keeps the names.
        split_weight: ``(tensor, base config.json dict) -> parts`` for the tuple targets of
            ``weight_table`` whose parts are not equal consecutive chunks (a fused
            projection laid out per head group); None splits into equal chunks.
        text_config: ``(base config.json dict, where) -> text config dict`` for families
            whose config changes type on export; None keeps the base config.
        export_tokenizer: ``(llm folder, training tokenizer) -> fast tokenizer`` of a
            transformers class for a family whose tokenizer is remote code (it replaces
            every other rule of the export); None when the training tokenizer is one.
        weight_signatures: ``{regex: label}``; a key matching one shows this family's weights.
        build_tiny: ``(out folder, fixtures folder or None, tie embeddings)`` saves a tiny
            random model and its tokenizer; None when the family has no tiny recipe.
        tiny_real_tokenizer: whether ``../shared/fixtures`` hold the family's real
            tokenizer for its tiny recipe (else the recipe's tokenizer is always synthetic).
        min_transformers: the lowest transformers version with the model class, where
            xtuner's pin (4.48) lacks it: the family runs on the newer stack only
            (``.venv-tf457``); ``""`` when xtuner's stack has it.
        old_stack_only: why the family does not run on the newer stack (transformers
            4.57), or ``""`` when it does.
        packing_refusal: why packed training (``pack_to_max_length=True``) cannot keep
            samples apart in this family's attention, or ``""`` when it can (the model's
            start-up probe checks it too, :mod:`xtuner_llava_swap.training.packing`).
    """

    name: str
    hf_text_model_type: str
    official_llava_class: str | None = None
    no_official_llava: str = ""
    weight_table: Mapping | None = None
    split_weight: Callable | None = None
    text_config: Callable[[dict, str], dict] | None = None
    export_tokenizer: Callable | None = None
    weight_signatures: Mapping = field(default_factory=dict)
    build_tiny: Callable | None = None
    tiny_real_tokenizer: bool = True
    min_transformers: str = ""
    old_stack_only: str = ""
    packing_refusal: str = ""

    def __post_init__(self):
        if self.official_llava_class is None and not self.no_official_llava:
            raise ValueError(f"family {self.name!r}: say why it has no official LLaVA class")
        object.__setattr__(self, "weight_signatures", MappingProxyType(dict(self.weight_signatures)))

    @property
    def stack(self) -> str:
        """The environments this family trains and exports in, in words."""
        if self.min_transformers:
            return f"newer only (transformers >= {self.min_transformers})"
        if self.old_stack_only:
            return "xtuner's (transformers 4.48) only"
        return "xtuner's (4.48) or newer"

    def check_stack(self) -> None:
        """Raise :class:`RuntimeError`, in one line, when the installed transformers lacks
        this family's model class."""
        if not self.min_transformers:
            return
        import transformers
        from packaging.version import Version

        if Version(transformers.__version__) < Version(self.min_transformers):
            raise RuntimeError(
                f"the {self.name} family needs transformers >= {self.min_transformers} (its "
                f"model class), this environment has {transformers.__version__}: use the "
                "newer stack (make setup builds .venv-tf457)")


class FamilyRegistry(Mapping):
    """Name -> :class:`LLMFamily`; registering a taken name is an error."""

    def __init__(self):
        self._families: dict[str, LLMFamily] = {}

    def register(self, family: LLMFamily) -> LLMFamily:
        if family.name in self._families:
            raise ValueError(f"family {family.name!r} is already registered")
        self._families[family.name] = family
        return family

    def __getitem__(self, name: str) -> LLMFamily:
        try:
            return self._families[name]
        except KeyError:
            raise KeyError(f"unknown LLM family {name!r}; known families: "
                           f"{', '.join(self._families)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._families)

    def __len__(self) -> int:
        return len(self._families)


FAMILIES = FamilyRegistry()


def register_family(family: LLMFamily) -> LLMFamily:
    """Add ``family`` to :data:`FAMILIES` (each family folder calls this once)."""
    return FAMILIES.register(family)


def guess_family(keys) -> str | None:
    """The label of the first family signature a key of ``keys`` matches, if any."""
    import re

    signatures = [(re.compile(pattern), label) for family in FAMILIES.values()
                  for pattern, label in family.weight_signatures.items()]
    for key in keys:
        for pattern, label in signatures:
            if pattern.search(key):
                return label
    return None


def get_family(name) -> LLMFamily:
    """The family registered as ``name`` (an :class:`LLMFamily` is returned as is)."""
    return name if isinstance(name, LLMFamily) else FAMILIES[name]
