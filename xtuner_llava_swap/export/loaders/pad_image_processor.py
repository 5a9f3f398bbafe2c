"""``LlavaImageProcessor`` for transformers versions that lack it (4.48, xtuner's pin).

Exported ``hf`` folders name ``LlavaImageProcessor`` with ``do_pad=True``: a CLIP image
processor that first pads the image to a square with the mean colour, centred, as
xtuner's ``LLaVADataset(pad_image_to_square=True)`` does in training. Newer transformers
ship that class; on older ones importing this package registers this equivalent under
the same name, so ``AutoProcessor.from_pretrained`` finds it.
"""
from __future__ import annotations

import transformers
from transformers import AutoImageProcessor, CLIPImageProcessor


def _pad_to_square(image, background):
    from .llava_official import expand_to_square

    return expand_to_square(image, background)


class LlavaImageProcessor(CLIPImageProcessor):
    """CLIP preprocessing after an optional pad-to-square with the mean colour."""

    def __init__(self, do_pad: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.do_pad = do_pad

    def preprocess(self, images, do_pad: bool | None = None, **kwargs):
        from PIL import Image

        do_pad = self.do_pad if do_pad is None else do_pad
        if do_pad:
            background = tuple(int(x * 255) for x in self.image_mean)
            listed = images if isinstance(images, (list, tuple)) else [images]
            if not all(isinstance(image, Image.Image) for image in listed):
                raise TypeError("LlavaImageProcessor(do_pad=True) pads PIL images; got "
                                f"{sorted({type(i).__name__ for i in listed})}")
            images = [_pad_to_square(image.convert("RGB"), background) for image in listed]
        return super().preprocess(images, **kwargs)


def register_pad_image_processor() -> bool:
    """Register :class:`LlavaImageProcessor` unless transformers has its own; True if done."""
    if hasattr(transformers, "LlavaImageProcessor"):
        return False
    from .llava_official import LlavaQwenConfig

    AutoImageProcessor.register(LlavaQwenConfig, slow_image_processor_class=LlavaImageProcessor,
                                exist_ok=True)
    return True
