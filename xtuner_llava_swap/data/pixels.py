"""Image preprocessing as training does it: the pixel values of PIL images.

The one place that turns pictures into the vision encoder's input for the dataset
(:class:`~xtuner_llava_swap.data.dataset.LLaVASwapDataset`), the evaluation hook and the
export's ``--verify`` reference, so the three cannot drift apart.
"""
from __future__ import annotations


def image_pixels(images, image_processor, pad_image_to_square: bool):
    """The pixel values of ``images`` (PIL images), one row each: RGB (an RGB image, as the
    dataset's are, is not copied again), padded to a square with the processor's mean colour
    as background (xtuner's ``expand2square``) when ``pad_image_to_square``, then ``image_processor.preprocess(..., return_tensors="pt")``."""
    from xtuner.dataset.utils import expand2square

    pictures = [image if image.mode == "RGB" else image.convert("RGB") for image in images]
    if pad_image_to_square:
        background = tuple(int(x * 255) for x in image_processor.image_mean)
        pictures = [expand2square(picture, background) for picture in pictures]
    return image_processor.preprocess(pictures, return_tensors="pt")["pixel_values"]
