"""EvaluateChatHook for any LLM profile, stopping on token ids.

:class:`EvaluateChatHook` is a drop-in replacement for xtuner's
``xtuner.engine.hooks.EvaluateChatHook`` (same arguments, same schedule: before
training, every ``every_n_iters`` iterations, at checkpoint iterations, after
training; outputs in the log and, at checkpoints, in ``vis_data/eval_outputs_iter_N.txt``)
that differs where xtuner's hook is wrong for other LLMs:

* the prompt is built exactly as the training data is (this package's template map fn,
  so the profile's default system prompt is used unless ``system`` says otherwise,
  then xtuner's ``encode_fn``: bos only where the tokenizer has one);
* the prompt and the generation are the inference room's
  (:class:`~xtuner_llava_swap.inference.generation.RunGenerator`), as for ``--verify`` and
  the chat and eval tools;
* stopping is decided on token ids (:class:`StopOnTokenIds`): each step compares the
  last generated id with the stop ids, never decodes the whole sequence; every stop word
  must be one token of the tokenizer, the profile's rule
  (:func:`~xtuner_llava_swap.profiles.prompt_format.stop_id_sequences`);
* ``bos_token_id`` is never passed as ``None`` to ``generate``;
* under DeepSpeed ZeRO-3 on several ranks every rank runs every generation step
  (``synced_gpus``), so ranks whose replies end at different steps stay in step;
* no shared mutable defaults (xtuner's ``stop_words=[]`` grows with every instance);
* before training it generates ``min(50, max_new_tokens)`` tokens (xtuner: always 50);
* an id past the tokenizer's vocabulary (Qwen embeddings have spare rows that an
  untrained, sampling model can pick) is shown as ``<unknown token id N>``, where
  ``QWenTokenizer.decode`` would raise and stop the training;
* its profile, its tokenizer's and its prompt template's must agree (checked when the hook
  is built, :mod:`xtuner_llava_swap.profiles.profile_agreement`); :attr:`EvaluateChatHook.profile`
  is the profile they name;
* each prompt may come with several images, one, or none (``evaluation_images`` entries
  may be lists, or ``None``); the prompt places them as training places a sample's images
  (:mod:`xtuner_llava_swap.inference.prompt`: ``<image>`` placeholders in the prompt stay where
  they are, one per image, else one ``<image>`` per image goes in front; a count that does
  not fit is refused when the hook is built), and every kind runs through the same path on
  Qwen-7B (remote code, ``QWenLMHeadModel``) and Qwen2-family models alike;
* the vision features are selected as the model selects them in training
  (:func:`xtuner_llava_swap.training.llava_model.visual_features`: a ``LLaVASwapModel`` by
  its tower's rule, e.g. every SigLIP patch; xtuner's ``LLaVAModel`` with the class token
  dropped).

Each sample is logged as ``Sample output:`` + prompt + reply (special tokens kept,
so the stop word is visible), followed by one line
``EvaluateChatHook: N new tokens, stopped by '<|im_end|>'`` (or ``reached max_new_tokens``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, StoppingCriteriaList
from xtuner.engine.hooks import EvaluateChatHook as XtunerEvaluateChatHook

from ..inference.generation import RunGenerator, StopOnTokenIds  # noqa: F401  (re-exported)
from ..inference.prompt import as_image_list, user_text

# xtuner's sampling defaults for its EvaluateChatHook.
DEFAULT_GENERATION_KWARGS = dict(do_sample=True, temperature=0.1, top_p=0.75, top_k=40)


def _features(model, pixels):
    """The projected features of ``pixels``, selected as ``model`` selects them in training
    (:func:`~xtuner_llava_swap.training.llava_model.visual_features`)."""
    from .llava_model import visual_features

    return visual_features(model, pixels)


def _partitioned_over_ranks(llm) -> bool:
    """True when DeepSpeed ZeRO-3 splits ``llm``'s weights over several ranks. Every rank
    must then run every generation step (transformers' ``synced_gpus``), also after its own
    reply has ended, or the ranks' weight gathers fall out of step. transformers decides
    this itself only under its own DeepSpeed integration, which xtuner does not use."""
    import torch.distributed as dist

    return (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
            and hasattr(next(llm.parameters()), "ds_id"))


@dataclass(frozen=True)
class ChatSample:
    """One evaluation generation: the prompt, the new token ids and their text."""

    prompt: str
    token_ids: tuple
    reply: str
    stop_word: str | None  # the stop word the reply ends with, None when max_new_tokens was reached

    def log_text(self) -> str:
        ending = (f"stopped by {self.stop_word!r}" if self.stop_word is not None
                  else "reached max_new_tokens")
        return (f"Sample output:\n{self.prompt}{self.reply}\n"
                f"EvaluateChatHook: {len(self.token_ids)} new tokens, {ending}\n")


class EvaluateChatHook(XtunerEvaluateChatHook):
    """Generate replies to ``evaluation_inputs`` during training (see the module docstring).

    Args:
        tokenizer: tokenizer config dict (or a built tokenizer).
        evaluation_inputs: a prompt or a list of prompts.
        evaluation_images: ``None`` (text-only prompts), one image for every prompt, or a
            list with one entry per prompt (a list of one entry serves every prompt): an
            image, a list of images (several for one prompt), or ``None`` (text-only).
            Paths or URLs. A prompt holding ``<image>`` must hold one per image of its
            entry; one without any gets them in front (see :mod:`xtuner_llava_swap.inference.prompt`).
        image_processor: image processor config dict; required when there are images.
        system: ``None`` uses the template's ``DEFAULT_SYSTEM`` (what the training data
            gets from :func:`xtuner_llava_swap.profiles.template_map_fn_factory` without
            a ``system``); ``""`` means no system prompt; any other text is used as is.
        prompt_template: template dict, profile name or dotted path; defaults to the
            template of ``profile``.
        profile: an LLM profile name (``"qwen"``, ``"qwen2.5"``...) or object.
        every_n_iters, max_new_tokens: as in xtuner's hook.
        stop_words: defaults to the template's ``STOP_WORDS``.
        generation_kwargs: ``GenerationConfig`` fields that override xtuner's sampling
            defaults (``do_sample=True, temperature=0.1, top_p=0.75, top_k=40``).
        pad_image_to_square: pad images like ``LLaVADataset(pad_image_to_square=True)``.
    """

    def __init__(self, tokenizer, evaluation_inputs, evaluation_images=None, image_processor=None,
                 system=None, prompt_template=None, every_n_iters=None, max_new_tokens=600,
                 stop_words=None, generation_kwargs=None, profile=None,
                 pad_image_to_square=True):
        from xtuner.registry import BUILDER

        from ..profiles import get_profile
        from ..profiles.profile_agreement import agreed_profile, tokenizer_profile
        from ..profiles.template_map import resolve_template, template_profiles

        if prompt_template is None and profile is None:
            raise ValueError("EvaluateChatHook needs a profile (e.g. profile='qwen') or a "
                             "prompt_template")
        template = resolve_template(prompt_template if prompt_template is not None
                                    else get_profile(profile).template)
        self.template = template
        self.system = system
        self.evaluation_inputs = ([evaluation_inputs] if isinstance(evaluation_inputs, str)
                                  else list(evaluation_inputs))
        self.evaluation_images = self._load_images(evaluation_images, len(self.evaluation_inputs))
        for number, (text, images) in enumerate(zip(self.evaluation_inputs,
                                                    self.evaluation_images)):
            user_text(text, len(as_image_list(images)),  # refuses a count that does not fit
                      what=f"EvaluateChatHook: evaluation_inputs[{number}]")
        self.every_n_iters = every_n_iters
        self.max_new_tokens = max_new_tokens
        self.pad_image_to_square = pad_image_to_square
        self.tokenizer = BUILDER.build(tokenizer) if isinstance(tokenizer, dict) else tokenizer
        self.profile = agreed_profile("EvaluateChatHook", [
            ("tokenizer.profile", tokenizer_profile(self.tokenizer)),
            ("profile", None if profile is None else get_profile(profile).name),
            ("prompt_template", () if prompt_template is None
             else template_profiles(prompt_template))])
        self.image_processor = None
        if image_processor is not None:
            self.image_processor = (BUILDER.build(image_processor)
                                    if isinstance(image_processor, dict) else image_processor)
        if self.image_processor is None and any(map(as_image_list, self.evaluation_images)):
            raise ValueError("EvaluateChatHook: evaluation_images are given but "
                             "image_processor is not")

        self.stop_words = tuple(stop_words if stop_words is not None
                                else template.get("STOP_WORDS", ()))
        if not self.stop_words:
            raise ValueError("EvaluateChatHook: no stop words (neither stop_words nor the "
                             "template's STOP_WORDS)")
        # one rule for every stop word, the profile's: exactly one token of the tokenizer
        # (the inference room's generator checks it; it generates for this hook)
        self._generator = RunGenerator(None, self.tokenizer, template, self.image_processor,
                                       pad_image_to_square, _features, system=system,
                                       stop_words=self.stop_words)
        self.stop_criteria = StoppingCriteriaList([self._generator.stopping])
        self.gen_config = GenerationConfig(**self._generation_kwargs(generation_kwargs or {}))
        self.is_first_run = True

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _load_images(evaluation_images, n_inputs: int) -> list:
        """One entry per prompt: ``None``, one PIL image, or a list of PIL images."""
        from xtuner.dataset.utils import load_image

        def is_path(value) -> bool:
            return isinstance(value, (str, os.PathLike))

        if evaluation_images is None:
            return [None] * n_inputs
        entries = [evaluation_images] if is_path(evaluation_images) else list(evaluation_images)
        if len(entries) == 1:
            entries = entries * n_inputs
        if len(entries) != n_inputs:
            raise ValueError(f"EvaluateChatHook: {len(entries)} evaluation_images for "
                             f"{n_inputs} evaluation_inputs (give 1 or one per input)")
        loaded = {}

        def load(image):
            if not is_path(image):
                raise ValueError(f"EvaluateChatHook: evaluation image {image!r} is not a path "
                                 "or URL (an entry is a path, a list of paths, or None)")
            image = os.fspath(image)
            if image not in loaded:
                try:
                    loaded[image] = load_image(image)
                except Exception as error:
                    raise ValueError(f"EvaluateChatHook: cannot load evaluation image "
                                     f"{image!r}: {error}") from error
            return loaded[image]

        return [None if entry is None else load(entry) if is_path(entry)
                else [load(image) for image in entry] for entry in entries]

    def _generation_kwargs(self, overrides: dict) -> dict:
        """xtuner's defaults (sampling ones only when sampling), the tokenizer's eos/pad
        (the first stop id where it has no eos), its bos only when it has one, then
        ``overrides``."""
        tokenizer = self.tokenizer
        first_stop = self._generator.stop_ids[0]
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else first_stop
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        sampling = DEFAULT_GENERATION_KWARGS if overrides.get("do_sample", True) else {}
        kwargs = dict(sampling, max_new_tokens=self.max_new_tokens, eos_token_id=eos,
                      pad_token_id=pad)
        if tokenizer.bos_token_id is not None:
            kwargs["bos_token_id"] = tokenizer.bos_token_id
        kwargs.update(overrides)
        if kwargs.get("bos_token_id", 0) is None:
            del kwargs["bos_token_id"]
        return kwargs

    # ------------------------------------------------------------- generation
    def prompt_ids(self, text: str, n_images: int = 0) -> tuple[str, list]:
        """The prompt text and ids for ``text`` with ``n_images`` images, built like a
        training sample's first turn (:func:`xtuner_llava_swap.inference.prompt.render`)."""
        prompt = self._generator.render(
            [{"role": "user", "content": text, "images": [None] * n_images}],
            what="EvaluateChatHook prompt")
        return prompt.text, prompt.ids

    @torch.no_grad()
    def generate_sample(self, model, text: str, image=None, max_new_tokens: int | None = None,
                        logits_processor=None) -> ChatSample:
        """Generate the reply of ``model`` (an xtuner ``LLaVAModel``) to one prompt with
        ``image``: ``None``, one image, or a list of images, through the inference room's
        :class:`~xtuner_llava_swap.inference.generation.RunGenerator`."""
        self._generator.model = model
        self._generator.synced_gpus = _partitioned_over_ranks(model.llm)
        extra = {} if logits_processor is None else {"logits_processor": logits_processor}
        reply = self._generator.generate(
            [[{"role": "user", "content": text, "images": as_image_list(image)}]],
            generation_config=self.gen_config,
            max_new_tokens=max_new_tokens or self.max_new_tokens, **extra)[0]
        return ChatSample(prompt=reply.prompt.text, token_ids=reply.token_ids, reply=reply.text,
                          stop_word=reply.stop_word)

    def decode(self, token_ids) -> str:
        """Text of ``token_ids`` (:meth:`~xtuner_llava_swap.inference.generation.Generator.decode`)."""
        return self._generator.decode(token_ids)

    def _eval_images(self, runner, model, device, max_new_tokens=None, save_eval_output=False):
        """Every prompt, with its images or text-only. xtuner's ``_generate_samples`` calls
        this one (``evaluation_images`` is always a list here, never ``None``)."""
        outputs = []
        for text, image in zip(self.evaluation_inputs, self.evaluation_images):
            sample = self.generate_sample(model, text, image, max_new_tokens)
            runner.logger.info(sample.log_text())
            outputs.append(sample.prompt + sample.reply + "\n")
        if save_eval_output:
            self._save_eval_output(runner, outputs)

    def before_train(self, runner):
        """xtuner's quick look before training: at most 50 new tokens (xtuner always uses 50,
        even when ``max_new_tokens`` is smaller)."""
        runner.logger.info("before_train in EvaluateChatHook.")
        self._generate_samples(runner, max_new_tokens=min(50, self.max_new_tokens))
