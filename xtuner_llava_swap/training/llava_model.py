"""``LLaVASwapModel``: xtuner's ``LLaVAModel`` with the vision features the tower calls for.

xtuner's forward always drops position 0 of the selected hidden states (``[:, 1:]``):
right for CLIP (a class token), wrong for SigLIP, where it is a real patch. This subclass
differs only there: the tower (a name of :mod:`xtuner_llava_swap.towers`, or the first
tower whose vision ``model_type`` the encoder has) says whether position 0 goes, and
gives the select layer unless the config sets ``visual_select_layer``.

Several images per sample need nothing more here: xtuner's
``prepare_inputs_labels_for_multimodal`` takes one row of the projected features per
``<image>`` id, in order (and one placeholder row per text-only sample), so a collate
function that passes the images of a batch flat serves any count. Parameters and state
dict names are xtuner's, so its checkpoints load unchanged.
"""
from __future__ import annotations

from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry
from xtuner.model import LLaVAModel
from xtuner.model.utils import prepare_inputs_labels_for_multimodal

from ..towers import tower_for

MODELS = Registry("model", parent=MMENGINE_MODELS, scope="xtuner_llava_swap")


@MODELS.register_module()
class LLaVASwapModel(LLaVAModel):
    """xtuner's ``LLaVAModel`` plus ``vision_tower`` (a tower name; None: from the encoder)."""

    def __init__(self, *args, vision_tower=None, visual_select_layer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.vision_tower = tower_for(getattr(self.visual_encoder.config, "model_type", None),
                                      vision_tower)
        self.visual_select_layer = (self.vision_tower.select_layer if visual_select_layer is None
                                    else visual_select_layer)

    def visual_features(self, pixel_values):
        """Projected features of ``pixel_values`` (one row per image), as the tower selects."""
        outputs = self.visual_encoder(pixel_values.to(self.visual_encoder.dtype),
                                      output_hidden_states=True)
        hidden = outputs.hidden_states[self.visual_select_layer]
        return self.projector(hidden[:, 1:] if self.vision_tower.drops_first_position else hidden)

    def forward(self, data, data_samples=None, mode="loss"):
        if "pixel_values" in data:
            if self.is_first_iter:  # xtuner's QLoRA + ZeRO-3 device move, before the encoder runs
                self.to(data["input_ids"].device)
                self.is_first_iter = False
            features = self.visual_features(data["pixel_values"])
            data = prepare_inputs_labels_for_multimodal(
                llm=self.llm, **{**data, "pixel_values": features})
        return super().forward(data, data_samples, mode)
