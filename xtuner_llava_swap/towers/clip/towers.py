"""The CLIP towers: ViT-L/14 at 336 (LLaVA-1.5's, today's default) and at 224."""
from ..tower import VisionTower, register_tower
from . import tiny

_COMMON = dict(
    family="clip",
    model_class="CLIPVisionModel",
    processor_class="CLIPImageProcessor",
    vision_model_type="clip_vision_model",
    patch_size=14,
    class_token=True,
    image_mean=(0.48145466, 0.4578275, 0.40821073),
    llava_name_word="clip",
    llava_tower_class="CLIPVisionTower",
    build_tiny=tiny.build,
)

CLIP_VIT_L_336 = register_tower(VisionTower(
    name="clip-vit-large-336", hf_example="openai/clip-vit-large-patch14-336", image_size=336,
    **_COMMON))

CLIP_VIT_L_224 = register_tower(VisionTower(
    name="clip-vit-large-224", hf_example="openai/clip-vit-large-patch14", image_size=224,
    **_COMMON))
