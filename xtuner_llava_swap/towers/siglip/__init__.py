"""SigLIP (Google): no class token, every position is a patch and is kept (``full``);
LLaVA-NeXT loads it by a name containing "siglip" and removes the last encoder layer itself."""
from . import towers  # noqa: F401  (registers the SigLIP towers)
