"""Vision towers: one folder per encoder family (``clip/``, ``siglip/``), the counterpart of
the LLM family folders. Each registers its variants (:class:`VisionTower`) and holds its
tiny test recipe (``tiny.py``)."""
from .tower import TOWERS, VisionTower, get_tower, register_tower, tower_for

# Each folder registers its towers; this order is the order of the listings.
from . import clip, siglip  # noqa: E402,F401,I001

__all__ = ["TOWERS", "VisionTower", "get_tower", "register_tower", "tower_for"]
