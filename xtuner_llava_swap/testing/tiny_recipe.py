"""What every family's tiny-model recipe shares: the sizes, the save step and a small
synthetic tokenizer for machines without ``../shared/fixtures``.

A family's ``tiny.py`` (``families/<name>/tiny.py``) builds its real architecture class at
these sizes and hands model and tokenizer to :func:`save_tiny`.
"""
from __future__ import annotations

from pathlib import Path

# Size of every tiny transformer: small enough for a 2-core CPU, large enough to be real.
HIDDEN, HEADS, KV_HEADS, INTERMEDIATE, LAYERS = 32, 4, 2, 64, 2


def zero_rows_beyond_tokenizer(model, n_tokens: int) -> None:
    """Zero the embedding/lm_head rows no token maps to, like a real model's padding rows.

    A random tiny model would otherwise sample those ids, which the tokenizer cannot decode.
    """
    import torch

    with torch.no_grad():
        for emb in {id(e): e for e in (model.get_input_embeddings(),
                                       model.get_output_embeddings())}.values():
            emb.weight[n_tokens:] = 0


def save_tiny(model, tokenizer, out: Path) -> None:
    """Save ``model`` and ``tokenizer`` like a real checkpoint (generation ids from the tokenizer)."""
    zero_rows_beyond_tokenizer(model, len(tokenizer))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


SYNTHETIC_CORPUS = (
    "Describe the person's appearance. This person has a big smile and no glasses. "
    "Who are the people in this image? What is the capital of France? The capital of "
    "France is Paris. A photo of a dog on the grass, a cat on a sofa, two people playing "
    "soccer in a field. The image shows a red square and a blue circle on white. ")


def synthetic_bpe(special_tokens, unk_token: str | None = None):
    """A small byte-level BPE (``tokenizers.Tokenizer``) whose first ids are ``special_tokens``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(unk_token=unk_token))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([SYNTHETIC_CORPUS] * 4, trainer)
    return bpe


def synthetic_chatml_tokenizer(extra_tokens=()):
    """Synthetic stand-in with Qwen's ChatML contract: ``<|endoftext|>``, ``<|im_start|>``,
    ``<|im_end|>`` at ids 0-2, no bos, eos ``<|im_end|>``; ``extra_tokens`` added as plain
    (non-special) tokens."""
    from transformers import AddedToken, Qwen2TokenizerFast

    bpe = synthetic_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tokenizer = Qwen2TokenizerFast(tokenizer_object=bpe, bos_token=None, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token=None)
    if extra_tokens:
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False)
                              for t in extra_tokens])
    return tokenizer


def fixture_or_synthetic_tokenizer(fixtures: Path | None, fixture: str, synthetic) -> tuple:
    """``(tokenizer, vocab_size)``: the fixture folder's tokenizer and its config's vocab size,
    or, without fixtures, ``synthetic()`` with its length rounded up to 64."""
    if fixtures is not None:
        import json

        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(fixtures / fixture)
        return tokenizer, json.loads((fixtures / fixture / "config.json").read_text())["vocab_size"]
    tokenizer = synthetic()
    return tokenizer, round_up(len(tokenizer), 64)


def synthetic_llama_tokenizer():
    """Synthetic stand-in with Llama-2's contract: ``<unk>``, ``<s>``, ``</s>`` at 0-2, bos added."""
    from transformers import LlamaTokenizerFast

    return LlamaTokenizerFast(tokenizer_object=synthetic_bpe(["<unk>", "<s>", "</s>"], "<unk>"),
                              bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                              add_bos_token=True, legacy=False)
