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
    llava_select_layers=(-2,),
    build_tiny=tiny.build,
)

SIGLIP_SO400M_384 = register_tower(VisionTower(
    name="siglip-so400m-384", hf_example="google/siglip-so400m-patch14-384", image_size=384,
    patch_size=14, **_COMMON))

SIGLIP_BASE_224 = register_tower(VisionTower(
    name="siglip-base-224", hf_example="google/siglip-base-patch16-224", image_size=224,
    patch_size=16, **_COMMON))
