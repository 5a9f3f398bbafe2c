"""Data for xtuner's LLaVA: format map functions, image-safe fast encoding, bad-sample
rules, a preprocessing cache, the image preprocessing (:mod:`.pixels`), the drop-in dataset
class and the preflight report.

Importing this package registers the map functions in xtuner's ``MAP_FUNC``.
"""
from .dataset import LLaVASwapDataset
from .encode import BatchEncoder, EncodedTexts, apply_length_policy
from .image_tokens import image_token_count, resolve_image_token_count
from .map_fns import (MAP_FNS, any_format_map_fn, llava_format_map_fn, messages_format_map_fn,
                      register_map_fns)
from .preprocess import PreparedText, drop_bad_images, prepare_text
from .validate import REASONS, DataError, ProblemLog, SampleError

register_map_fns()

__all__ = ["LLaVASwapDataset", "BatchEncoder", "EncodedTexts",
           "apply_length_policy", "image_token_count", "resolve_image_token_count", "MAP_FNS",
           "any_format_map_fn", "llava_format_map_fn", "messages_format_map_fn",
           "register_map_fns", "PreparedText", "drop_bad_images", "prepare_text", "REASONS",
           "DataError", "ProblemLog", "SampleError"]
