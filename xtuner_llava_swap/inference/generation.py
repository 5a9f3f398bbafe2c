"""Generation over every kind of loaded LLaVA: one interface, three model kinds.

A :class:`Generator` takes conversations (lists of messages, see :mod:`.prompt`), renders
each with the run's template exactly as training renders it (:func:`.prompt.render`),
turns the batch into the inputs its model kind takes, left padded, and generates:

* :class:`RunGenerator`: xtuner's ``LLaVAModel`` / ``LLaVASwapModel`` of a run (the
  trained LoRA live): the images preprocessed as training does
  (:func:`~xtuner_llava_swap.data.pixels.image_pixels`), features selected by the
  ``features`` function it is given, placed by xtuner's
  ``prepare_inputs_labels_for_multimodal``, generated from the embeddings (with no cache
  object at the start for a model whose remote code reads the embeddings only then);
* :class:`HFGenerator`: a ``LlavaForConditionalGeneration`` with its processor (each image
  place expanded to the model's image token, the count the processor writes);
* :class:`LlavaGenerator`: an official-layout model of :mod:`xtuner_llava_swap.export.loaders`
  (``generate(ids, images=...)``, ids with ``IMAGE_TOKEN_INDEX``).

Stopping is on the template's stop ids (every stop word one token,
:class:`StopOnTokenIds`, also the eos ids of ``generate``); each reply is cut after its
first stop id. Greedy unless ``temperature`` > 0 (then sampling with ``top_p``), or a
``generation_config`` says otherwise (EvaluateChatHook's sampling defaults). ``streamer``
is passed to ``generate`` (one conversation at a time). :meth:`Generator.logits` gives the
teacher-forced logits of a prompt followed by given tokens (``--verify``'s comparison).

Model objects are built elsewhere (:mod:`.loading` for the tools, the training runner for
the hook, ``--verify`` for its models): this module imports neither the training room nor
the export.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from ..profiles.prompt_format import stop_id_sequences
from ..token_contract import IMAGE_TOKEN_INDEX
from .prompt import Prompt, render


class StopOnTokenIds(StoppingCriteria):
    """Stop a sequence when its last tokens equal one of ``stop_sequences`` (lists of ids).

    The cost per generated token depends only on the stop sequences, never on the
    length of what was generated (the sequences are moved to the ids' device once, not at
    every token). Returns one flag per batch row.
    """

    def __init__(self, stop_sequences: Sequence[Sequence[int]]):
        sequences = [tuple(int(i) for i in seq) for seq in stop_sequences]
        if not sequences or any(len(seq) == 0 for seq in sequences):
            raise ValueError("stop_sequences must be non-empty id sequences, "
                             f"got {stop_sequences!r}")
        by_length: dict[int, list] = {}
        for seq in dict.fromkeys(sequences):
            by_length.setdefault(len(seq), []).append(seq)
        self.stop_sequences = list(dict.fromkeys(sequences))
        self._by_length = {n: torch.tensor(seqs, dtype=torch.long) for n, seqs in by_length.items()}

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if next(iter(self._by_length.values())).device != input_ids.device:
            self._by_length = {n: seqs.to(input_ids.device) for n, seqs in self._by_length.items()}
        for length, sequences in self._by_length.items():
            if input_ids.shape[1] < length:
                continue
            tail = input_ids[:, -length:]
            done |= (tail[:, None, :] == sequences[None, :, :]).all(dim=-1).any(dim=-1)
        return done

    def matched(self, token_ids: Sequence[int]) -> tuple | None:
        """The stop sequence ``token_ids`` ends with, or ``None``."""
        token_ids = list(token_ids)
        return next((seq for seq in self.stop_sequences
                     if len(token_ids) >= len(seq) and tuple(token_ids[-len(seq):]) == seq), None)


@dataclass(frozen=True)
class Reply:
    """One generated reply: its prompt, the new ids (the stop id included when one ended
    it), their text (special tokens kept) and the stop word that ended it (``None``: it
    reached ``max_new_tokens``)."""

    prompt: Prompt
    token_ids: tuple
    text: str
    stop_word: str | None

    @property
    def answer(self) -> str:
        """The reply without its stop word, stripped."""
        text = self.text
        if self.stop_word is not None and text.endswith(self.stop_word):
            text = text[:-len(self.stop_word)]
        return text.strip()


def sampling_kwargs(temperature: float = 0.0, top_p: float = 1.0) -> dict:
    """``generate`` arguments: greedy for ``temperature`` 0, else sampling with ``top_p``."""
    if temperature and temperature > 0:
        return dict(do_sample=True, temperature=float(temperature), top_p=float(top_p), top_k=0)
    return dict(do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None)


def _left_pad(rows: list, pad) -> tuple[torch.Tensor, torch.Tensor]:
    """``(stacked, attention_mask)`` of 1-d id rows (or 2-d embedding rows), padded left."""
    length = max(row.shape[0] for row in rows)
    shape = (len(rows), length, *rows[0].shape[1:])
    out = rows[0].new_full(shape, pad) if rows[0].dim() == 1 else rows[0].new_zeros(shape)
    mask = torch.zeros(len(rows), length, dtype=torch.long, device=rows[0].device)
    for number, row in enumerate(rows):
        out[number, length - row.shape[0]:] = row
        mask[number, length - row.shape[0]:] = 1
    return out, mask


class Generator:
    """Conversations in, :class:`Reply` objects out (see the module docstring).

    ``template``: the run's xtuner template dict (a profile's ``template``); ``system``:
    ``None`` for the template's default system prompt, ``""`` for none, else the text.
    """

    def __init__(self, model, tokenizer, template, system: str | None = None,
                 stop_words: Sequence[str] | None = None, profile=None):
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self.system = system
        self.profile = profile
        self.stop_words = tuple(stop_words if stop_words is not None
                                else template.get("STOP_WORDS", ()))
        if not self.stop_words:
            raise ValueError("no stop words (neither stop_words nor the template's STOP_WORDS)")
        sequences = stop_id_sequences(self.tokenizer, self.stop_words)
        self.stop_ids = [seq[0] for seq in sequences]
        self._stop_word_of = {}
        for word, seq in zip(self.stop_words, sequences):
            self._stop_word_of.setdefault(seq[0], word)
        self.stopping = StopOnTokenIds(sequences)

    # ----------------------------------------------------------------- prompts
    def render(self, messages: list, what: str = "prompt") -> Prompt:
        return render(self.tokenizer, self.template, messages, self.system, what=what)

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.stop_ids[0]

    # -------------------------------------------------------- per model kind
    def _inputs(self, prompts: list) -> dict:
        """``generate`` keyword arguments of the batch (left padded)."""
        raise NotImplementedError

    def _new_tokens(self, output: torch.Tensor, inputs: dict) -> torch.Tensor:
        """The generated part of ``generate``'s output (ids in: the prompt is returned too)."""
        return output[:, inputs["input_ids"].shape[1]:] if "input_ids" in inputs else output

    def _forward_logits(self, prompt: Prompt, forced: list) -> torch.Tensor:
        raise NotImplementedError

    # -------------------------------------------------------------- generate
    @torch.no_grad()
    def generate(self, conversations: list, *, max_new_tokens: int = 64,
                 temperature: float = 0.0, top_p: float = 1.0, generation_config=None,
                 streamer=None, **generate_kwargs) -> list:
        """One :class:`Reply` per conversation, generated in one batch."""
        prompts = [c if isinstance(c, Prompt) else self.render(c) for c in conversations]
        inputs = self._inputs(prompts)
        kwargs = {}
        if generation_config is None:  # a given one keeps its own eos / pad / bos
            generation_config = GenerationConfig(**sampling_kwargs(temperature, top_p))
            kwargs = dict(eos_token_id=self.stop_ids, pad_token_id=self.pad_id)
            if self.tokenizer.bos_token_id is not None:
                kwargs["bos_token_id"] = self.tokenizer.bos_token_id
        output = self.model_generate(inputs, generation_config=generation_config,
                                     max_new_tokens=max_new_tokens,
                                     stopping_criteria=StoppingCriteriaList([self.stopping]),
                                     streamer=streamer, **{**kwargs, **generate_kwargs})
        new = self._new_tokens(output, inputs).tolist()
        return [self._reply(prompt, row) for prompt, row in zip(prompts, new)]

    def model_generate(self, inputs: dict, **kwargs):
        return self.model.generate(**inputs, **kwargs)

    def _reply(self, prompt: Prompt, row: list) -> Reply:
        stop_at = next((n for n, token in enumerate(row) if token in self._stop_word_of), None)
        ids = tuple(row if stop_at is None else row[:stop_at + 1])
        stop_word = None if stop_at is None else self._stop_word_of[row[stop_at]]
        return Reply(prompt=prompt, token_ids=ids, text=self.decode(ids), stop_word=stop_word)

    def decode(self, token_ids) -> str:
        """Text of ``token_ids``, special tokens kept. An id without a token (the embedding
        of Qwen models has more rows than the tokenizer has tokens, and an untrained model
        can pick one) is shown as ``<unknown token id N>`` instead of failing."""
        vocab_size = len(self.tokenizer)
        text, run = [], []
        for token_id in list(token_ids) + [None]:
            if token_id is not None and token_id < vocab_size:
                run.append(token_id)
                continue
            if run:
                text.append(self.tokenizer.decode(run, skip_special_tokens=False))
                run = []
            if token_id is not None:
                text.append(f"<unknown token id {token_id}>")
        return "".join(text)

    @torch.no_grad()
    def logits(self, prompt: Prompt, forced: list) -> torch.Tensor:
        """Teacher-forced logits (positions x vocabulary) of ``prompt`` then ``forced``."""
        return self._forward_logits(prompt, list(forced))


class RunGenerator(Generator):
    """xtuner's LLaVA model of a run. ``features(model, pixels)`` selects and projects the
    image features as the model does in training; ``synced_gpus`` for a model split over
    ZeRO-3 ranks."""

    def __init__(self, model, tokenizer, template, image_processor, pad_image_to_square: bool,
                 features: Callable, system=None, stop_words=None, profile=None,
                 synced_gpus: bool = False):
        super().__init__(model, tokenizer, template, system, stop_words, profile)
        self.image_processor = image_processor
        self.pad_image_to_square = pad_image_to_square
        self.features = features
        self.synced_gpus = synced_gpus

    @property
    def device(self):
        return next(self.model.llm.parameters()).device

    def pixels(self, images: list) -> torch.Tensor:
        from ..data.pixels import image_pixels

        return image_pixels(images, self.image_processor, self.pad_image_to_square)

    def image_features(self, images: list) -> torch.Tensor:
        """Projected features of ``images`` (one row each), in one vision forward."""
        return self.features(self.model, self.pixels(images).to(self.device))

    def embeddings(self, prompt: Prompt, features=None) -> torch.Tensor:
        """The prompt's input embeddings (image places filled with ``features``, the rows
        of its images, computed here when not given), one row."""
        from xtuner.model.utils import prepare_inputs_labels_for_multimodal

        ids = torch.tensor([prompt.ids], device=self.device)
        if not prompt.images:
            return self.model.llm.get_input_embeddings()(ids)[0]
        if features is None:
            features = self.image_features(prompt.images)
        data = prepare_inputs_labels_for_multimodal(llm=self.model.llm, input_ids=ids,
                                                    pixel_values=features)
        return data["inputs_embeds"][0]

    def _inputs(self, prompts: list) -> dict:
        """Embeddings when a prompt has images; ids for a text-only batch (as xtuner's
        ``prepare_inputs_labels_for_multimodal`` leaves them)."""
        if not any(p.images for p in prompts):
            ids, mask = _left_pad([torch.tensor(p.ids, device=self.device) for p in prompts],
                                  self.pad_id)
            return {"input_ids": ids, "attention_mask": mask}
        features = self.image_features([image for p in prompts for image in p.images])
        rows, start = [], 0
        for prompt in prompts:
            rows.append(self.embeddings(prompt, features[start:start + len(prompt.images)]))
            start += len(prompt.images)
        embeds, mask = _left_pad(rows, 0)
        return {"inputs_embeds": embeds, "attention_mask": mask}

    def model_generate(self, inputs: dict, **kwargs):
        llm = self.model.llm
        base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
        if "inputs_embeds" not in inputs or _reads_embeds_with_empty_cache(base, inputs):
            return llm.generate(**inputs, synced_gpus=self.synced_gpus, **kwargs)
        # Remote code written for transformers < 4.42 (InternLM2's) reads inputs_embeds only
        # when past_key_values is None, while generate starts with an empty cache object:
        # start it without one (the model makes its own cache at the first step).
        base._supports_cache_class = False
        try:
            return llm.generate(**inputs, synced_gpus=self.synced_gpus, **kwargs)
        finally:
            del base._supports_cache_class

    def _forward_logits(self, prompt: Prompt, forced: list) -> torch.Tensor:
        new = self.model.llm.get_input_embeddings()(torch.tensor([forced], device=self.device))
        embeds = torch.cat([self.embeddings(prompt)[None], new], 1)
        return self.model.llm(inputs_embeds=embeds).logits[0]


def _reads_embeds_with_empty_cache(model, inputs: dict) -> bool:
    """Whether ``model`` prepares its first generation step from ``inputs_embeds`` when
    ``generate`` hands it an empty cache object (what transformers >= 4.42 does)."""
    from transformers import DynamicCache

    embeds, mask = inputs["inputs_embeds"], inputs["attention_mask"]
    first = model.prepare_inputs_for_generation(
        embeds.new_zeros(embeds.shape[:1] + (0,), dtype=torch.long),
        past_key_values=DynamicCache(), attention_mask=mask, inputs_embeds=embeds,
        cache_position=torch.arange(embeds.shape[1], device=embeds.device), use_cache=True)
    return first.get("inputs_embeds") is not None


class HFGenerator(Generator):
    """A Hugging Face ``LlavaForConditionalGeneration`` and its processor."""

    def __init__(self, model, processor, template, system=None, stop_words=None,
                 profile=None):
        super().__init__(model, processor.tokenizer, template, system, stop_words, profile)
        self.processor = processor
        self.image_token_id = model.config.image_token_index
        self._tokens_per_image = None

    def pixels(self, images: list) -> torch.Tensor:
        return self.processor.image_processor(images, return_tensors="pt")["pixel_values"]

    def tokens_per_image(self, image) -> int:
        """Image tokens the processor writes for one image (asked once)."""
        if self._tokens_per_image is None:
            probe = self.processor(images=[image], text=self.processor.image_token,
                                   add_special_tokens=False, return_tensors="pt")
            self._tokens_per_image = int((probe["input_ids"] == self.image_token_id).sum())
        return self._tokens_per_image

    def expanded_ids(self, prompt: Prompt) -> list:
        """The prompt's ids with each image place expanded to the model's image tokens."""
        ids = []
        for token in prompt.ids:
            if token == IMAGE_TOKEN_INDEX:
                ids += [self.image_token_id] * self.tokens_per_image(prompt.images[0])
            else:
                ids.append(token)
        return ids

    def _pixel_batch(self, prompts: list) -> dict:
        images = [image for prompt in prompts for image in prompt.images]
        if not images:
            return {}
        return {"pixel_values": self.pixels(images).to(self.device, self.model.dtype)}

    def _inputs(self, prompts: list) -> dict:
        rows = [torch.tensor(self.expanded_ids(p), device=self.device) for p in prompts]
        ids, mask = _left_pad(rows, self.pad_id)
        return {"input_ids": ids, "attention_mask": mask, **self._pixel_batch(prompts)}

    def _forward_logits(self, prompt: Prompt, forced: list) -> torch.Tensor:
        ids = torch.tensor([self.expanded_ids(prompt) + forced], device=self.device)
        return self.model(input_ids=ids, **self._pixel_batch([prompt])).logits[0]


class LlavaGenerator(Generator):
    """An official-layout model (``LlavaQwenForCausalLM`` ...) with its tokenizer and image
    processor; pads images to a square when its config's ``image_aspect_ratio`` is ``pad``."""

    def __init__(self, model, tokenizer, image_processor, template, system=None,
                 stop_words=None, profile=None):
        super().__init__(model, tokenizer, template, system, stop_words, profile)
        self.image_processor = image_processor

    def pixels(self, images: list) -> torch.Tensor:
        from ..data.pixels import image_pixels

        pad = getattr(self.model.config, "image_aspect_ratio", None) == "pad"
        return image_pixels(images, self.image_processor, pad)

    def _images(self, prompts: list):
        images = [image for prompt in prompts for image in prompt.images]
        return (self.pixels(images).to(self.device, self.model.dtype) if images else None)

    def _inputs(self, prompts: list) -> dict:
        ids, mask = _left_pad([torch.tensor(p.ids, device=self.device) for p in prompts],
                              self.pad_id)
        images = self._images(prompts)
        return {"inputs": ids, "attention_mask": mask,
                **({"images": images} if images is not None else {})}

    def _new_tokens(self, output, inputs):
        return output if "images" in inputs else output[:, inputs["inputs"].shape[1]:]

    def _forward_logits(self, prompt: Prompt, forced: list) -> torch.Tensor:
        ids = torch.tensor([prompt.ids + forced], device=self.device)
        return self.model(input_ids=ids, images=self._images([prompt])).logits[0]
