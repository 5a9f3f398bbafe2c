"""``LLaVASwapModel``: xtuner's ``LLaVAModel`` with the vision features the tower calls for.

xtuner's forward always drops position 0 of the selected hidden states (``[:, 1:]``):
right for CLIP (a class token), wrong for SigLIP, where it is a real patch. This subclass
differs only there: the tower (a name of :mod:`xtuner_llava_swap.towers`, or the first
tower whose vision ``model_type`` the encoder has) says whether position 0 goes, and
gives the select layer unless the config sets ``visual_select_layer``. The selection is
:func:`visual_features`, which also serves the evaluation hook and ``--verify``'s
reference (for xtuner's ``LLaVAModel`` too: position 0 dropped).

Several images per sample need nothing more here: xtuner's
``prepare_inputs_labels_for_multimodal`` takes one row of the projected features per
``<image>`` id, in order (and one placeholder row per text-only sample), so a collate
function that passes the images of a batch flat serves any count. Parameters and state
dict names are xtuner's, so its checkpoints load unchanged.

``to_hf`` is what ``xtuner convert pth_to_hf`` calls: ``--save-format xtuner`` is xtuner's
own writer (adapters and projector; for a tower xtuner's ``chat`` / ``mmbench`` cannot load,
a note names the plugin's tools); ``huggingface`` and ``official`` are written by the writers
in :attr:`LLaVASwapModel.save_formats`, which the package's ``__init__`` fills with the
export's (:mod:`xtuner_llava_swap.export.pth_to_hf`; training does not import the export).

Packed batches (``sample_lengths`` from ``llava_collate_fn``) get per-sample position ids
and what keeps the samples apart (:mod:`.packing`): attention per sample segment
(:mod:`.segment_attention`), flash attention's varlen path, or a block-diagonal mask,
chosen by probing the LLM at the first packed batch.
"""
from __future__ import annotations

from mmengine import print_log
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry
from xtuner.model import LLaVAModel
from xtuner.model.utils import prepare_inputs_labels_for_multimodal

from ..towers import tower_for
from .packing import choose_attention, isolate_samples

PACKED_PATHS = {"segments": "attention per sample segment (torch SDPA)",
                "flash_attention_2": "flash attention's varlen path",
                "dense": "a block-diagonal attention mask (L x L)"}
MODELS = Registry("model", parent=MMENGINE_MODELS, scope="xtuner_llava_swap")


@MODELS.register_module()
class LLaVASwapModel(LLaVAModel):
    """xtuner's ``LLaVAModel`` plus ``vision_tower`` (a tower name; None: from the encoder)."""

    # xtuner's --save-format -> writer(model, cfg, save_dir, save_format, fp32,
    # save_pretrained_kwargs); filled by the package's __init__ with the export's writers
    save_formats: dict = {}

    def __init__(self, *args, vision_tower=None, visual_select_layer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.vision_tower = tower_for(getattr(self.visual_encoder.config, "model_type", None),
                                      vision_tower)
        self.packed_attention = None  # how the LLM keeps packed samples apart: at the first pack
        self.visual_select_layer = (self.vision_tower.select_layer if visual_select_layer is None
                                    else visual_select_layer)

    def visual_features(self, pixel_values):
        """Projected features of ``pixel_values`` (one row per image), as the tower selects
        (:func:`visual_features`)."""
        return visual_features(self, pixel_values)

    def forward(self, data, data_samples=None, mode="loss"):
        sample_lengths = data.pop("sample_lengths", None)
        if "pixel_values" in data:
            if self.is_first_iter:  # xtuner's QLoRA + ZeRO-3 device move, before the encoder runs
                self.to(data["input_ids"].device)
                self.is_first_iter = False
            features = self.visual_features(data["pixel_values"])
            data = prepare_inputs_labels_for_multimodal(
                llm=self.llm, **{**data, "pixel_values": features})
        if sample_lengths is not None:
            if self.packed_attention is None:
                self.packed_attention = choose_attention(self.llm)
                print_log(f"packed batches: the LLM keeps samples apart by "
                          f"{PACKED_PATHS[self.packed_attention]}", "current")
            data = isolate_samples(data, sample_lengths, self.packed_attention)
        return super().forward(data, data_samples, mode)

    def to_hf(self, cfg, save_dir, fp32=False, save_pretrained_kwargs={}, save_format="xtuner",
              **kwargs):  # noqa: B006  (xtuner's signature)
        if save_format != "xtuner":
            if save_format not in self.save_formats:
                raise NotImplementedError(f"--save-format {save_format!r}: choose xtuner, "
                                          f"{', '.join(self.save_formats)}")
            self.save_formats[save_format](self, cfg, save_dir, save_format, fp32,
                                           save_pretrained_kwargs)
            return
        super().to_hf(cfg, save_dir, fp32, save_pretrained_kwargs, save_format, **kwargs)
        if self.vision_tower.xtuner_tools_refusal:
            print_log(self.vision_tower.xtuner_tools_refusal, "current")


def visual_features(model, pixel_values, drops_first_position: bool | None = None):
    """Projected features of ``pixel_values`` (one row per image), selected as ``model``
    selects them in training: a :class:`LLaVASwapModel` as its tower says, xtuner's
    ``LLaVAModel`` with position 0 (the class token) dropped. ``drops_first_position``, when
    given, decides instead (``--verify`` passes the run's, the one its export was written
    with)."""
    if drops_first_position is None:
        drops_first_position = (model.vision_tower.drops_first_position
                                if isinstance(model, LLaVASwapModel) else True)
    encoder = model.visual_encoder
    outputs = encoder(pixel_values.to(encoder.dtype), output_hidden_states=True)
    hidden = outputs.hidden_states[model.visual_select_layer]
    return model.projector(hidden[:, 1:] if drops_first_position else hidden)
