"""The plugin's EvaluateChatHook on tiny real models: stops exactly at a stop token, builds
prompts exactly like the training data, never passes bos None, no shared defaults.

Generation is forced with a LogitsProcessor: the stop token is banned before step k and is
the only choice at step k, so a correct stopping criterion ends the reply after exactly k
tokens. ``<|endoftext|>`` is a stop word of the Qwen profiles but not the tokenizer's eos
(``<|im_end|>``), so when it is forced only the hook's token-id criterion can stop there.
"""
from __future__ import annotations

import inspect
import time

import pytest
import torch
from mmengine.config import ConfigDict
from transformers import (AutoModelForCausalLM, CLIPImageProcessor, CLIPVisionModel,
                          LogitsProcessor, LogitsProcessorList)

from support import requires_fixtures
from xtuner_llava_swap.profiles import get_profile
from xtuner_llava_swap.training.hooks import EvaluateChatHook, StopOnTokenIds
from xtuner_llava_swap.training.tokenizers import (chat_template_ids, encode_llava_conversation,
                                                   tokenizer_dict)

K = 4  # the step at which the stop token is forced
MAX_NEW = 12
# (tiny family, profile): Qwen-7B through its remote code needs the fixture files.
MODELS = [pytest.param("qwen", "qwen", marks=requires_fixtures, id="qwen-remote-code"),
          pytest.param("qwen2", "qwen2.5", id="qwen2")]


class ForceTokenAtStep(LogitsProcessor):
    """Ban ``token_id`` before step ``k`` (1-based), make it the only choice at step ``k``."""

    def __init__(self, token_id: int, k: int):
        self.token_id, self.k, self.step = token_id, k, 0

    def __call__(self, input_ids, scores):
        self.step += 1
        scores = scores.clone()
        if self.step == self.k:
            scores[:] = -float("inf")
            scores[:, self.token_id] = 0.0
        else:
            scores[:, self.token_id] = -float("inf")
        return scores


@pytest.fixture(scope="module")
def llava(tiny_parts):
    """``(family) -> (LLaVAModel, llm path, image processor dict)`` on tiny parts."""
    from xtuner.model import LLaVAModel

    built = {}

    def get(family):
        if family not in built:
            llm, clip = tiny_parts(family), tiny_parts("clip")
            model = LLaVAModel(
                llm=ConfigDict(type=AutoModelForCausalLM.from_pretrained,
                               pretrained_model_name_or_path=str(llm), trust_remote_code=True,
                               torch_dtype=torch.float32),
                visual_encoder=ConfigDict(type=CLIPVisionModel.from_pretrained,
                                          pretrained_model_name_or_path=str(clip)),
                freeze_llm=True, freeze_visual_encoder=True).eval()
            processor = dict(type=CLIPImageProcessor.from_pretrained,
                             pretrained_model_name_or_path=str(clip))
            built[family] = model, llm, processor
        return built[family]

    return get


@pytest.fixture(scope="module")
def image(tiny_parts):
    _, _, images = tiny_parts("data")
    return str(next(p for p in sorted(images.rglob("*")) if p.is_file()))


def make_hook(llm, processor, profile, image, **kwargs):
    return EvaluateChatHook(tokenizer=tokenizer_dict(profile, llm), image_processor=processor,
                            evaluation_inputs=["Describe the image.", "What is the capital of France?"],
                            evaluation_images=[image, None], profile=profile,
                            max_new_tokens=MAX_NEW, generation_kwargs=dict(do_sample=False),
                            **kwargs)


# ------------------------------------------------------------------- criterion
def test_stop_on_token_ids_flags_each_row_by_its_last_tokens():
    criterion = StopOnTokenIds([[7], [3, 4]])
    batch = torch.tensor([[1, 2, 7], [1, 3, 4], [3, 4, 5], [4, 3, 1]])
    assert criterion(batch, None).tolist() == [True, True, False, False]
    assert criterion(torch.tensor([[4]]), None).tolist() == [False]
    assert criterion.matched([9, 3, 4]) == (3, 4) and criterion.matched([4, 3]) is None
    with pytest.raises(ValueError, match="non-empty"):
        StopOnTokenIds([[]])


def test_stop_on_token_ids_cost_does_not_grow_with_length():
    # A billion-token view over one stored id per row: anything that read, copied or decoded
    # the whole sequence would take minutes and gigabytes; the criterion reads the tail only.
    criterion = StopOnTokenIds([[151645], [151643]])
    long = torch.tensor([[151645], [42]]).expand(2, 1_000_000_000)
    start = time.perf_counter()
    for _ in range(100):
        flags = criterion(long, None)
    assert flags.tolist() == [True, False]
    assert (time.perf_counter() - start) / 100 < 0.01


# ------------------------------------------------------------------ generation
@pytest.mark.parametrize("family,profile", MODELS)
@pytest.mark.parametrize("stop_word", ["<|endoftext|>", "<|im_end|>"])
def test_generation_stops_exactly_at_the_forced_stop_token(llava, image, family, profile, stop_word):
    model, llm, processor = llava(family)
    hook = make_hook(llm, processor, profile, image)
    tokenizer = hook.tokenizer
    stop_id = tokenizer.convert_tokens_to_ids(stop_word)
    assert tokenizer.eos_token == "<|im_end|>"
    for text, img in zip(hook.evaluation_inputs, hook.evaluation_images):  # image+text, text-only
        sample = hook.generate_sample(
            model, text, img, logits_processor=LogitsProcessorList([ForceTokenAtStep(stop_id, K)]))
        assert len(sample.token_ids) == K
        assert sample.token_ids[-1] == stop_id and stop_id not in sample.token_ids[:-1]
        assert sample.stop_word == stop_word
        assert sample.reply.endswith(stop_word)
        assert f"{K} new tokens, stopped by {stop_word!r}" in sample.log_text()


@requires_fixtures
def test_without_the_criterion_qwen_remote_code_generates_past_a_non_eos_stop_word(llava, image):
    # The control for the test above: Qwen-7B's own generate does not stop at <|endoftext|>
    # when it is not the eos, so stopping there is the hook's criterion's doing.
    model, llm, processor = llava("qwen")
    hook = make_hook(llm, processor, "qwen", image)
    stop_id = hook.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    _, ids = hook.prompt_ids(hook.evaluation_inputs[1], n_images=0)
    prompt = torch.tensor([ids])
    output = model.llm.generate(input_ids=prompt, generation_config=hook.gen_config,
                                max_new_tokens=MAX_NEW,
                                logits_processor=LogitsProcessorList([ForceTokenAtStep(stop_id, K)]))
    new = output[0, prompt.shape[1]:].tolist()
    assert new[K - 1] == stop_id and len(new) > K


@pytest.mark.parametrize("family,profile", MODELS)
def test_reply_reaching_max_new_tokens_has_no_stop_word(llava, image, family, profile):
    model, llm, processor = llava(family)
    hook = make_hook(llm, processor, profile, image)
    banned = [hook.tokenizer.convert_tokens_to_ids(w) for w in hook.stop_words]

    class BanStopWords(LogitsProcessor):
        def __call__(self, input_ids, scores):
            scores = scores.clone()
            scores[:, banned] = -float("inf")
            return scores

    sample = hook.generate_sample(model, hook.evaluation_inputs[0], hook.evaluation_images[0],
                                  max_new_tokens=5, logits_processor=LogitsProcessorList([BanStopWords()]))
    assert len(sample.token_ids) == 5 and sample.stop_word is None
    assert "5 new tokens, reached max_new_tokens" in sample.log_text()


@pytest.mark.parametrize("family,profile", MODELS)
def test_generate_never_gets_bos_none(llava, image, family, profile, monkeypatch):
    model, llm, processor = llava(family)
    hook = make_hook(llm, processor, profile, image)
    assert hook.tokenizer.bos_token_id is None  # Qwen tokenizers have no bos
    seen = []
    real_generate = model.llm.generate

    def recording_generate(*args, **kwargs):
        seen.append(kwargs)
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(model.llm, "generate", recording_generate)
    for text, img in zip(hook.evaluation_inputs, hook.evaluation_images):
        hook.generate_sample(model, text, img, max_new_tokens=2)
    assert len(seen) == 2 and all("bos_token_id" not in kwargs for kwargs in seen)
    assert hook.gen_config.bos_token_id is None
    assert {"inputs_embeds"} <= set(seen[0]) and "input_ids" not in seen[0]  # image prompt
    assert {"input_ids"} <= set(seen[1]) and "inputs_embeds" not in seen[1]  # text-only prompt


# ---------------------------------------------------------------------- prompts
@pytest.mark.parametrize("family,profile", MODELS)
@pytest.mark.parametrize("system", [None, "", "Answer briefly."])
def test_prompt_ids_are_the_training_ids_of_a_first_turn(llava, image, family, profile, system):
    _, llm, processor = llava(family)
    hook = make_hook(llm, processor, profile, image, system=system)
    tokenizer = hook.tokenizer
    question, reply = "Who is in the image?", "A woman."
    sample = {"conversations": [{"from": "human", "value": f"<image>\n{question}"},
                                {"from": "gpt", "value": reply}]}
    trained = encode_llava_conversation(sample, tokenizer, profile, system=system)["input_ids"]
    prompt_text, prompt = hook.prompt_ids(question, n_images=1)
    reply_ids = tokenizer.encode(reply, add_special_tokens=False)
    assert trained[:len(prompt)] == prompt
    assert trained[len(prompt):len(prompt) + len(reply_ids)] == reply_ids
    assert prompt.count(-200) == 1  # IMAGE_TOKEN_INDEX where the user text starts
    # = the profile's chat template, i.e. the model's own format
    assert prompt == chat_template_ids(tokenizer, profile, [
        {"role": "user", "content": f"<image>\n{question}"}], system=system)
    expected_system = get_profile(profile).default_system if system is None else system
    if expected_system:
        assert prompt_text.startswith(f"<|im_start|>system\n{expected_system}<|im_end|>\n")
    else:
        assert prompt_text.startswith("<|im_start|>user\n")


# -------------------------------------------------------------- construction
def test_no_mutable_defaults():
    for name, parameter in inspect.signature(EvaluateChatHook.__init__).parameters.items():
        assert not isinstance(parameter.default, (list, dict, set)), name


@requires_fixtures
def test_stop_words_do_not_leak_between_hooks(llava, image):
    _, llm, processor = llava("qwen")
    chat = make_hook(llm, processor, "qwen", image)
    base = make_hook(llm, processor, "qwen-base", image)
    again = make_hook(llm, processor, "qwen", image)
    assert chat.stop_words == again.stop_words == ("<|im_end|>", "<|endoftext|>")
    assert base.stop_words == ("<|endoftext|>",)
    explicit = make_hook(llm, processor, "qwen", image, stop_words=["<|endoftext|>"])
    assert explicit.stop_words == ("<|endoftext|>",)
    assert make_hook(llm, processor, "qwen", image).stop_words == chat.stop_words


def test_needs_a_profile_or_template_and_an_image_processor_for_images(tiny_parts, image):
    llm = tiny_parts("qwen2")
    with pytest.raises(ValueError, match="profile"):
        EvaluateChatHook(tokenizer=tokenizer_dict("qwen2.5", llm), evaluation_inputs="Hi")
    with pytest.raises(ValueError, match="image_processor"):
        EvaluateChatHook(tokenizer=tokenizer_dict("qwen2.5", llm), evaluation_inputs="Hi",
                         evaluation_images=image, profile="qwen2.5")
    with pytest.raises(ValueError, match="cannot load evaluation image '/nonexistent.jpg'"):
        EvaluateChatHook(tokenizer=tokenizer_dict("qwen2.5", llm), evaluation_inputs="Hi",
                         evaluation_images="/nonexistent.jpg", profile="qwen2.5",
                         image_processor=dict(type=CLIPImageProcessor.from_pretrained,
                                              pretrained_model_name_or_path=str(tiny_parts("clip"))))
    with pytest.raises(ValueError, match="2 evaluation_images for 3 evaluation_inputs"):
        EvaluateChatHook(tokenizer=tokenizer_dict("qwen2.5", llm), evaluation_inputs=["a", "b", "c"],
                         evaluation_images=[image, None], profile="qwen2.5",
                         image_processor=dict(type=CLIPImageProcessor.from_pretrained,
                                              pretrained_model_name_or_path=str(tiny_parts("clip"))))


def test_prompt_template_may_be_given_as_a_profile_name_without_profile(tiny_parts):
    hook = EvaluateChatHook(tokenizer=tokenizer_dict("qwen2.5", tiny_parts("qwen2")),
                            evaluation_inputs="Hi", prompt_template="qwen2.5")
    assert hook.stop_words == get_profile("qwen2.5").stop_words
    assert hook.evaluation_images == [None]
    assert hook.gen_config.eos_token_id == hook.tokenizer.convert_tokens_to_ids("<|im_end|>")


@pytest.mark.parametrize("family,profile", MODELS)
def test_embedding_path_generates_what_the_id_path_generates(llava, image, family, profile):
    # Image prompts are generated from inputs_embeds, text-only ones from input_ids; Qwen-7B's
    # remote-code generate must treat both alike (its prepare_inputs_for_generation differs
    # from transformers' own). Same text prompt both ways -> the same greedy tokens.
    model, llm, processor = llava(family)
    hook = make_hook(llm, processor, profile, image)
    _, ids = hook.prompt_ids(hook.evaluation_inputs[1], n_images=0)
    prompt = torch.tensor([ids])
    by_ids = model.llm.generate(input_ids=prompt, generation_config=hook.gen_config,
                                max_new_tokens=8, min_new_tokens=8)[0, prompt.shape[1]:]
    embeds = model.llm.get_input_embeddings()(prompt)
    by_embeds = model.llm.generate(inputs_embeds=embeds, generation_config=hook.gen_config,
                                   max_new_tokens=8, min_new_tokens=8)[0]
    assert by_embeds.tolist() == by_ids.tolist() and len(by_ids) == 8


def test_one_image_path_serves_every_prompt(tiny_parts, image):
    from pathlib import Path

    from PIL import Image

    hook = EvaluateChatHook(tokenizer=tokenizer_dict("qwen2.5", tiny_parts("qwen2")),
                            evaluation_inputs=["a", "b"], evaluation_images=Path(image),
                            profile="qwen2.5",
                            image_processor=dict(type=CLIPImageProcessor.from_pretrained,
                                                 pretrained_model_name_or_path=str(tiny_parts("clip"))))
    assert len(hook.evaluation_images) == 2
    assert all(isinstance(img, Image.Image) for img in hook.evaluation_images)


@pytest.mark.parametrize("family,profile", MODELS)
def test_ids_past_the_tokenizer_are_shown_not_fatal(llava, image, family, profile):
    # Qwen embeddings have more rows than the tokenizer has tokens; a sampling, untrained
    # model can pick such an id, which QWenTokenizer.decode cannot decode.
    model, llm, processor = llava(family)
    hook = make_hook(llm, processor, profile, image)
    beyond = len(hook.tokenizer) + 5
    assert beyond < model.llm.get_output_embeddings().weight.shape[0]
    sample = hook.generate_sample(model, hook.evaluation_inputs[1], None, max_new_tokens=K,
                                  logits_processor=LogitsProcessorList([ForceTokenAtStep(beyond, 2)]))
    assert sample.token_ids[1] == beyond and len(sample.token_ids) == K
    assert f"<unknown token id {beyond}>" in sample.reply
    assert sample.reply.startswith(hook.tokenizer.decode(list(sample.token_ids[:1])))


# ------------------------------------------------------------- several images
TWO_IMAGE_TURNS = [  # (hook prompt, the same user turn in a training sample)
    ("Compare <image> with <image>, please.", "Compare <image> with <image>, please."),
    ("What do both show?", "<image>\n<image>\nWhat do both show?"),  # none: put in front
]


@pytest.fixture(scope="module")
def two_image_data(tiny_parts, tmp_path_factory):
    """``(dataset, image paths)``: LLaVASwapDataset(max_images=2) over one sample per
    TWO_IMAGE_TURNS, each with two images of the tiny data set."""
    import json

    from xtuner_llava_swap.data import LLaVASwapDataset
    from xtuner_llava_swap.profiles import template_map_fn_factory

    _, _, folder = tiny_parts("data")
    files = [str(p.relative_to(folder)) for p in sorted(folder.rglob("*")) if p.is_file()][:2]
    samples = [{"image": files, "conversations": [{"from": "human", "value": turn},
                                                  {"from": "gpt", "value": "Two faces."}]}
               for _, turn in TWO_IMAGE_TURNS]
    data_path = tmp_path_factory.mktemp("two-images") / "two_images.json"
    data_path.write_text(json.dumps(samples))
    dataset = LLaVASwapDataset(
        str(folder), dict(type=CLIPImageProcessor.from_pretrained,
                          pretrained_model_name_or_path=str(tiny_parts("clip"))),
        data_path=str(data_path), tokenizer=tokenizer_dict("qwen2.5", tiny_parts("qwen2")),
        dataset_map_fn="llava_format_map_fn", template_map_fn=template_map_fn_factory("qwen2.5"),
        pad_image_to_square=True, max_images=2, cache=False, strict=True)
    return dataset, [str(folder / f) for f in files]


def two_image_hook(tiny_parts, images, **kwargs):
    return EvaluateChatHook(
        tokenizer=tokenizer_dict("qwen2.5", tiny_parts("qwen2")), profile="qwen2.5",
        evaluation_inputs=[prompt for prompt, _ in TWO_IMAGE_TURNS], evaluation_images=[images],
        image_processor=dict(type=CLIPImageProcessor.from_pretrained,
                             pretrained_model_name_or_path=str(tiny_parts("clip"))),
        max_new_tokens=MAX_NEW, generation_kwargs=dict(do_sample=False), **kwargs)


def test_two_image_prompt_ids_are_the_training_ids_of_the_same_turn(tiny_parts, two_image_data):
    dataset, images = two_image_data
    hook = two_image_hook(tiny_parts, images)
    reply = hook.tokenizer.encode("Two faces.", add_special_tokens=False)
    for index, (prompt_text, turn) in enumerate(TWO_IMAGE_TURNS):
        trained = list(dataset[index]["input_ids"])
        text, prompt = hook.prompt_ids(prompt_text, n_images=2)
        assert trained[:len(prompt)] == prompt, turn
        assert trained[len(prompt):len(prompt) + len(reply)] == reply
        assert prompt.count(-200) == 2 and turn in text
    # in place: text on both sides of the first image; in front: the two side by side
    first, second = (hook.prompt_ids(p, n_images=2)[1] for p, _ in TWO_IMAGE_TURNS)
    places = [i for i, t in enumerate(first) if t == -200]
    assert places[1] - places[0] > 1
    places = [i for i, t in enumerate(second) if t == -200]
    newline = hook.tokenizer.encode("\n", add_special_tokens=False)
    assert second[places[0] + 1:places[1]] == newline  # "<image>\n<image>\n" in front


@pytest.fixture(scope="module")
def swap_model(tiny_parts):
    from xtuner_llava_swap.training.llava_model import LLaVASwapModel

    torch.manual_seed(0)
    return LLaVASwapModel(
        llm=ConfigDict(type=AutoModelForCausalLM.from_pretrained, torch_dtype=torch.float32,
                       pretrained_model_name_or_path=str(tiny_parts("qwen2"))),
        visual_encoder=ConfigDict(type=CLIPVisionModel.from_pretrained,
                                  pretrained_model_name_or_path=str(tiny_parts("clip"))),
        freeze_llm=True, freeze_visual_encoder=True).eval()


def test_both_images_reach_the_model_and_generation_stops(tiny_parts, two_image_data,
                                                          swap_model, monkeypatch):
    dataset, images = two_image_data
    hook = two_image_hook(tiny_parts, images)
    assert [len(entry) for entry in hook.evaluation_images] == [2, 2]
    seen_pixels, seen_generate = [], []
    handle = swap_model.visual_encoder.register_forward_pre_hook(
        lambda module, args, kwargs: seen_pixels.append(args[0].clone()), with_kwargs=True)
    real_generate = swap_model.llm.generate

    def recording_generate(*args, **kwargs):
        seen_generate.append(kwargs)
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(swap_model.llm, "generate", recording_generate)
    stop_id = hook.tokenizer.convert_tokens_to_ids("<|im_end|>")
    try:
        sample = hook.generate_sample(
            swap_model, hook.evaluation_inputs[0], hook.evaluation_images[0],
            logits_processor=LogitsProcessorList([ForceTokenAtStep(stop_id, K)]))
    finally:
        handle.remove()
    # the pixels are the training sample's: both images, padded to square, in order
    assert len(seen_pixels) == 1 and seen_pixels[0].shape == (2, 3, 56, 56)
    assert torch.equal(seen_pixels[0], dataset[0]["pixel_values"])
    assert not torch.equal(seen_pixels[0][0], seen_pixels[0][1])
    # each image's features stand where its <image> is, in order
    _, ids = hook.prompt_ids(hook.evaluation_inputs[0], n_images=2)
    features = swap_model.visual_features(seen_pixels[0])
    embeds = seen_generate[0]["inputs_embeds"][0]
    tokens = features.shape[1]
    places = [i for i, t in enumerate(ids) if t == -200]
    starts = [places[0], places[1] + tokens - 1]
    assert embeds.shape[0] == len(ids) - 2 + 2 * tokens
    for start, image_features in zip(starts, features):
        assert torch.allclose(embeds[start:start + tokens], image_features, atol=1e-6)
    # and the reply stops at the stop id
    assert len(sample.token_ids) == K and sample.token_ids[-1] == stop_id
    assert sample.stop_word == "<|im_end|>" and sample.prompt.count("<image>") == 2


def test_evaluation_images_forms_and_count_mismatch_named(tiny_parts, two_image_data):
    from PIL import Image

    _, (first, second) = two_image_data
    processor = dict(type=CLIPImageProcessor.from_pretrained,
                     pretrained_model_name_or_path=str(tiny_parts("clip")))

    def hook(inputs, images):
        return EvaluateChatHook(tokenizer=tokenizer_dict("qwen2.5", tiny_parts("qwen2")),
                                profile="qwen2.5", evaluation_inputs=inputs,
                                evaluation_images=images, image_processor=processor)

    built = hook(["a", "b", "Compare <image> and <image>."], [None, first, [first, second]])
    assert built.evaluation_images[0] is None
    assert isinstance(built.evaluation_images[1], Image.Image)
    assert [type(i) for i in built.evaluation_images[2]] == [type(built.evaluation_images[1])] * 2
    with pytest.raises(ValueError, match=r"evaluation_inputs\[1\] 'Compare <image> and "
                                         r"<image>\.' holds 2 <image> for 1 image"):
        hook(["a", "Compare <image> and <image>."], [None, first])
    with pytest.raises(ValueError, match=r"evaluation_inputs\[0\] 'Describe <image>\.' holds "
                                         r"1 <image> for 0 image"):
        hook(["Describe <image>."], None)
    with pytest.raises(ValueError, match="not a path"):
        hook(["a"], [[first, 3]])
