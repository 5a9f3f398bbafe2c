"""Data file -> checked, tokenized, length-fitted samples (with the cache in front).

:func:`prepare_text` reads a LLaVA-style json/jsonl file, maps every sample with the
dataset map function, applies the rules of :mod:`.validate`, encodes the survivors
in bulk (:mod:`.encode`) and fits them into ``max_length`` (image tokens included).
:func:`drop_bad_images` then removes samples whose image files are missing or
unreadable. Both collect what they skip in a :class:`~.validate.ProblemLog`, or raise
:class:`~.validate.DataError` naming the file and sample index when ``strict``.
The dataset class, ``tools/check_data.py`` and the bench all go through here.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..profiles.prompt_format import PromptFormat, Turn
from .cache import TextCache, cache_key, callable_fingerprint, file_sha256, tokenizer_fingerprint
from .encode import BatchEncoder, EncodedTexts, apply_length_policy, \
    turns_from_template_fn
from .map_fns import MAP_FNS, any_format_map_fn, image_list
from .validate import DataError, ProblemLog, SampleError, check_conversation, \
    check_image_count, find_bad_images

logger = logging.getLogger(__name__)

ENCODE_CHUNK = 1024  # samples mapped + tokenized per batched call (bounds the peak memory)


@dataclass
class PreparedText:
    """The samples that survived, in file order, and what was skipped."""

    encoded: EncodedTexts
    images: list[list[str]]  # per kept sample, relative to the image folder
    source_index: np.ndarray  # index of each kept sample in the data file
    problems: ProblemLog
    n_raw: int
    image_tokens: int
    from_cache: bool = False
    cache_path: str | None = None
    key_parts: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.encoded)

    def positions(self) -> np.ndarray:
        """LLM sequence length of each sample with every image expanded."""
        return self.encoded.lengths() + self.encoded.image_counts() * (self.image_tokens - 1)


# ----------------------------------------------------------------- resolving config
_FUNCTION_REPR = re.compile(r"^<function (\w+) at 0x[0-9a-fA-F]+>$")


def resolve_map_fn(map_fn: Any) -> Callable[[dict], dict]:
    """A map function from an object, a registered name, a dotted path, or the
    ``<function name at 0x...>`` string xtuner's train tool writes into dumped configs."""
    if map_fn is None:
        return any_format_map_fn
    map_fn = _built(map_fn)
    if callable(map_fn):
        return map_fn
    if isinstance(map_fn, str):
        from mmengine.utils.misc import get_object_from_string
        from xtuner.registry import MAP_FUNC

        found = MAP_FUNC.get(map_fn) if map_fn in MAP_FUNC else None
        repr_match = _FUNCTION_REPR.match(map_fn)
        if found is None and repr_match:
            import xtuner.dataset.map_fns as xtuner_map_fns

            name = repr_match.group(1)
            found = MAP_FNS.get(name) or getattr(xtuner_map_fns, name, None)
        if found is None and not repr_match:
            found = MAP_FNS.get(map_fn) or get_object_from_string(map_fn)
        if callable(found):
            return found
    raise TypeError(f"dataset_map_fn {map_fn!r} is neither a function nor the name of one "
                    f"registered in xtuner's MAP_FUNC (ours: {sorted(MAP_FNS)})")


def resolve_turn_builder(template_map_fn: Any) -> tuple[Callable[[list[dict]], list[Turn]], str]:
    """``(conversation -> templated turns, fingerprint)`` from what xtuner configs pass as
    ``template_map_fn``: ``dict(type=template_map_fn_factory, template=...)`` of xtuner or
    of :mod:`xtuner_llava_swap.profiles` (which adds the profile's default system), the
    built function, ``None`` (no template), or any other template function."""
    if template_map_fn is None:
        spec = PromptFormat()
        return spec.turns, spec.fingerprint()
    template_map_fn = build_template_map_fn(template_map_fn)
    spec = _known_template_spec(template_map_fn)
    if spec is not None:
        return spec.turns, spec.fingerprint()
    return turns_from_template_fn(template_map_fn), callable_fingerprint(template_map_fn)


def build_template_map_fn(template_map_fn: Any) -> Callable[[dict], dict]:
    """The function a config's ``template_map_fn`` stands for: a ``dict(type=factory, ...)``
    is built (``type`` resolved as :func:`resolve_map_fn` resolves names), a lazy placeholder
    or a name resolved, a function returned as it is."""
    if hasattr(template_map_fn, "get") and "type" in template_map_fn:
        args = dict(template_map_fn)
        factory = _built(args.pop("type"))
        return (resolve_map_fn(factory) if isinstance(factory, str) else factory)(**args)
    if isinstance(template_map_fn, str) or _is_lazy(template_map_fn):
        return resolve_map_fn(template_map_fn)
    return template_map_fn


def _known_template_spec(template_map_fn: Callable) -> PromptFormat | None:
    """The spec of a function made by the profiles' or xtuner's ``template_map_fn_factory``
    (recognised by the function it binds), else None."""
    from xtuner.dataset.map_fns.template_map_fn import template_map_fn as xtuner_template_map_fn

    from ..profiles import DEFAULT_SYSTEM_KEY
    from ..profiles.template_map import template_map_fn as profile_template_map_fn

    if not isinstance(template_map_fn, partial) or "template" not in template_map_fn.keywords:
        return None
    template = template_map_fn.keywords["template"]
    if template_map_fn.func is profile_template_map_fn:  # the profile's default system
        system = template_map_fn.keywords.get("system")
        return PromptFormat.from_template(
            template, template.get(DEFAULT_SYSTEM_KEY, "") if system is None else system,
            position_rules=True)
    if template_map_fn.func is xtuner_template_map_fn:  # xtuner's own: no default system
        return PromptFormat.from_template(template)
    return None


def _is_lazy(obj: Any) -> bool:
    from mmengine.config.lazy import LazyAttr, LazyObject

    return isinstance(obj, (LazyObject, LazyAttr))


def _built(obj: Any) -> Any:
    """The object an mmengine lazy-import placeholder stands for (else ``obj``)."""
    return obj.build() if _is_lazy(obj) else obj


def _qualified_name(obj: Any) -> str:
    """``module.name`` of a function, a LazyObject's target, or the string itself."""
    obj = _built(obj)
    if callable(obj) and hasattr(obj, "__module__"):
        return f"{obj.__module__}.{getattr(obj, '__name__', '')}"
    return str(obj)


def build_tokenizer(tokenizer: Any):
    if hasattr(tokenizer, "get") and "type" in tokenizer:
        from xtuner.registry import BUILDER

        return BUILDER.build(tokenizer)
    return tokenizer


# --------------------------------------------------------------------------- reading
def read_samples(path: str | Path) -> list:
    """Samples of a ``.json`` (a list) or ``.jsonl`` file. A jsonl line that is not UTF-8,
    does not parse or is nested too deeply becomes a :class:`SampleError` in its place;
    a ``.json`` file that cannot be read raises ``ValueError`` naming it."""
    path = Path(path)
    if path.suffix == ".jsonl":
        samples = []
        with open(path, "rb") as handle:
            for number, raw_line in enumerate(handle):
                samples.append(_parse_line(raw_line, number))
        return [s for s in samples if s is not None]
    if path.suffix != ".json":
        raise ValueError(f"{path}: expected a .json or .jsonl data file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 at byte {exc.start}; re-save it as UTF-8 "
                         "(or as .jsonl, where a bad line is skipped and counted)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to read as JSON") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: a .json data file must hold a list of samples, "
                         f"found {type(data).__name__}")
    return data


def _parse_line(raw_line: bytes, number: int):
    """One jsonl line -> its sample, a :class:`SampleError`, or None for a blank line."""
    try:
        line = raw_line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return SampleError("text_encoding", f"line {number + 1}: not UTF-8 at byte {exc.start}")
    if not line.strip():
        return None
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        return SampleError("invalid_json", f"line {number + 1}: {exc}")
    except RecursionError:
        return SampleError("invalid_json", f"line {number + 1}: nested too deeply")


# ----------------------------------------------------------------------- the pipeline
def prepare_text(data_path: str | Path, tokenizer: Any, *, image_tokens: int,
                 dataset_map_fn: Any = None, template_map_fn: Any = None,
                 max_length: int = 2048, length_policy: str = "drop", strict: bool = False,
                 max_images: int = 1, max_dataset_length: int | None = None, cache: bool = True,
                 cache_dir: str | Path | None = None, progress: bool = False) -> PreparedText:
    """Map, check, encode and length-fit every sample of ``data_path`` (see module doc)."""
    tokenizer = build_tokenizer(tokenizer)
    map_fn = resolve_map_fn(dataset_map_fn)
    build_turns, template_print = resolve_turn_builder(template_map_fn)
    store = TextCache(cache_dir) if cache else None
    key_parts, key = {}, None
    if store is not None:
        key_parts = dict(data=file_sha256(data_path), tokenizer=tokenizer_fingerprint(tokenizer),
                         template=template_print, map_fn=callable_fingerprint(map_fn),
                         max_length=max_length, image_tokens=image_tokens, policy=length_policy,
                         max_images=max_images, strict=strict,
                         max_dataset_length=max_dataset_length)
        key = cache_key(key_parts)
        hit = store.load(key)
        if hit is not None:
            encoded, meta = hit
            problems = ProblemLog()
            problems.merge_counts(meta["problems"])
            problems.examples = {k: [tuple(e) for e in v] for k, v in meta["examples"].items()}
            logger.info("%s: preprocessed text loaded from cache %s", data_path, store.path(key))
            return PreparedText(encoded, meta["images"], np.asarray(meta["source_index"]),
                                problems, meta["n_raw"], image_tokens, True,
                                str(store.path(key)), key_parts)

    raw = read_samples(data_path)
    indices = np.arange(len(raw))
    if max_dataset_length is not None and max_dataset_length < len(raw):
        indices = np.sort(np.random.default_rng(0).choice(len(raw), max_dataset_length,
                                                          replace=False))
    problems = ProblemLog()
    ours = map_fn in MAP_FNS.values()
    encoder = BatchEncoder(tokenizer)
    kept_index, kept_images = [], []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(indices), desc="preprocessing", unit="sample", mininterval=1)

    def mapped_chunks():
        """The kept samples' turns, ENCODE_CHUNK samples at a time (kept_index and
        kept_images grow in step); the encoder tokenizes one while the next is mapped."""
        for start in range(0, len(indices), ENCODE_CHUNK):
            chunk_turns = []
            for index in indices[start:start + ENCODE_CHUNK].tolist():
                sample, raw[index] = raw[index], None  # free each raw sample once mapped
                try:
                    turns, images = _map_one(sample, map_fn, ours, build_turns, max_images)
                except SampleError as error:
                    if strict:
                        raise DataError(data_path, index, error) from None
                    problems.add(index, error)
                    continue
                kept_index.append(index)
                kept_images.append(images)
                chunk_turns.append(turns)
            yield chunk_turns
            if bar is not None:
                bar.update(min(ENCODE_CHUNK, len(indices) - start))

    parts = encoder.encode_chunks(mapped_chunks())
    if bar is not None:
        bar.close()
    del raw
    encoded = EncodedTexts.concatenate(parts)
    del parts

    try:
        encoded, kept, removed = apply_length_policy(encoded, image_tokens, max_length,
                                                     length_policy)
    except SampleError as error:  # policy "error": name the sample
        raise DataError(data_path, kept_index[error.position], error) from None
    for position, error in sorted(removed.items()):
        if strict and error.reason == "no_supervised_tokens":
            raise DataError(data_path, kept_index[position], error)
        problems.add(kept_index[position], error)
    source_index = np.asarray(kept_index, dtype=np.int64)[kept]
    images = [kept_images[i] for i in kept]

    prepared = PreparedText(encoded, images, source_index, problems, len(indices), image_tokens,
                            key_parts=key_parts)
    if store is not None:
        meta = dict(images=images, source_index=source_index.tolist(),
                    problems=dict(problems.counts), examples=problems.examples,
                    n_raw=len(indices), key_parts=key_parts)
        prepared.cache_path = str(store.save(key, encoded, meta))
    return prepared


def _map_one(sample: Any, map_fn, ours: bool, build_turns,
             max_images: int) -> tuple[list[Turn], list[str]]:
    if isinstance(sample, SampleError):
        raise sample
    if not isinstance(sample, dict):
        raise SampleError("not_an_object", f"sample is {type(sample).__name__}")
    if ours:
        mapped = map_fn(sample)
    else:  # a foreign map function (xtuner's llava_map_fn...) gets the same rules after it
        try:
            mapped = map_fn(sample)
        except SampleError:
            raise
        except Exception as exc:
            raise SampleError("map_fn_error", f"{type(exc).__name__}: {exc}") from None
        if not isinstance(mapped, dict):
            raise SampleError("map_fn_error", f"the map function returned {type(mapped).__name__}")
        images = mapped.get("images")
        if images is None:
            images = image_list(sample.get("image"))
        mapped = {"conversation": mapped.get("conversation"), "images": images}
        check_conversation(mapped["conversation"], images)
    check_image_count(mapped["images"], max_images)
    return build_turns(mapped["conversation"]), mapped["images"]


def drop_bad_images(prepared: PreparedText, data_path: str | Path, image_folder: str | None,
                    check: str = "open", strict: bool = False, progress: bool = False,
                    allow_outside_image_folder: bool = False) -> PreparedText:
    """Remove the samples whose image files are missing, unreadable, degenerate or
    outside ``image_folder`` (each file checked once); strict raises on the first such
    sample in file order."""
    bad = find_bad_images((f for files in prepared.images for f in files), image_folder,
                          check, progress, allow_outside_image_folder)
    if not bad:
        return prepared
    keep = []
    for position, files in enumerate(prepared.images):
        error = next((bad[f] for f in files if f in bad), None)
        if error is None:
            keep.append(position)
            continue
        index = int(prepared.source_index[position])
        if strict:
            raise DataError(data_path, index, error)
        prepared.problems.add(index, error)
    return PreparedText(prepared.encoded.select(keep), [prepared.images[i] for i in keep],
                        prepared.source_index[keep], prepared.problems, prepared.n_raw,
                        prepared.image_tokens, prepared.from_cache, prepared.cache_path,
                        prepared.key_parts)
