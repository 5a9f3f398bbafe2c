"""The SigLIP towers: so400m-patch14-384 (LLaVA-OneVision's) and base-patch16-224."""
from ..tower import VisionTower, register_tower
from . import tiny

_COMMON = dict(
    family="siglip",
    model_class="SiglipVisionModel",
    processor_class="SiglipImageProcessor",
    vision_model_type="siglip_vision_model",
    class_token=False,
    image_mean=(0.5, 0.5, 0.5),
    llava_name_word="siglip",
    llava_tower_class="SigLipVisionTower",
    # LLaVA-NeXT's SigLipVisionTower: SigLipVisionModel.from_pretrained(mm_vision_tower) by
    # hub id, then it deletes the last encoder layer and the pooling head and takes the
    # last remaining hidden state (the whole tower's -2), asserting 729 positions
    llava_loads_by_name=True,
    llava_removed_layers=1,
    llava_held_overrides=(("vision_use_head", False),),
    llava_tokens_per_image=729,
    build_tiny=tiny.build,
)

SIGLIP_SO400M_384 = register_tower(VisionTower(
    name="siglip-so400m-384", hf_example="google/siglip-so400m-patch14-384", image_size=384,
    patch_size=14, **_COMMON))

SIGLIP_BASE_224 = register_tower(VisionTower(
    name="siglip-base-224", hf_example="google/siglip-base-patch16-224", image_size=224,
    patch_size=16, **_COMMON))
