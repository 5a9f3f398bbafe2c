"""CLIP ViT (OpenAI): a class token before the patches, dropped from the features (LLaVA's
``patch`` selection, xtuner's ``[:, 1:]``); the official loaders take it by its hub id."""
from . import towers  # noqa: F401  (registers the CLIP towers)
