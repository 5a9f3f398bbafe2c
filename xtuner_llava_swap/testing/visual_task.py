"""A small synthetic visual task that a tiny LLaVA can learn on a CPU, and the tiny LLM for it.

The task (:func:`build_visual_task`): WIDE pictures (twice as wide as high) of one coloured
shape near the left or the right edge, and up to three kinds of question about it: its colour,
its shape, its side (the kinds asked and the colours drawn are parameters). The shape always
lies in the outer quarter of the picture, so a centre crop (the image processor's own
shortest-edge resize and centre crop, what the run sees without ``pad_image_to_square``)
cuts it away: only a model fed the padded picture can answer.

Written in the formats users bring: the training set as LLaVA JSON (each picture once, the
three questions as the turns of one conversation, in a shuffled order), held-out items as
a VQA JSONL (``image``, ``question``, ``answer``, ``category``; image paths relative to the
file), each category balanced over its answers, and the same items twice more for the
controls that must fall to chance: every picture replaced by a blank one
(``heldout_blank.jsonl``) and every picture centre-cropped to a square
(``heldout_centre_crop.jsonl``, the square a centre crop keeps; padding a square changes
nothing, so the model sees what a centre crop gives).

The LLM (:func:`build_task_llm`): a family's tiny model with its synthetic tokenizer (a few
hundred rows: a step is cheap), the task's answers added as whole tokens (one token per
answer), and an ``lm_head`` drawn with a larger standard deviation. The finetune configs
freeze the LLM's embeddings and ``lm_head`` (LoRA trains the decoder layers), and the final
norm fixes the size of the last hidden state: with the usual 0.02 the logits of a tiny
random model span a fraction of a unit and the answers cannot rise above the rest of the
vocabulary within a CI budget (docs/learning_test.md has the measurements).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

COLOURS = {"red": (215, 35, 35), "green": (30, 160, 50), "blue": (35, 65, 215),
           "yellow": (230, 195, 20)}
SHAPES = ("circle", "square", "triangle")
SIDES = ("left", "right")
QUESTIONS = {"colour": "What colour is it?", "shape": "What shape is it?",
             "side": "Left or right?"}
ANSWERS = {"colour": tuple(COLOURS), "shape": SHAPES, "side": SIDES}
BACKGROUND = (250, 250, 250)


def answer_words() -> tuple:
    """Every answer of the task, each one word."""
    return tuple(word for answers in ANSWERS.values() for word in answers)


@dataclass(frozen=True)
class VisualTask:
    """The files of a task: LLaVA training JSON and its image folder; held-out VQA JSONL
    files (the items, the same with blank pictures, the same centre-cropped)."""

    train_json: Path
    image_folder: Path
    heldout: Path
    heldout_blank: Path
    heldout_centre_crop: Path
    answers: dict  # {kind: its answers}, for the kinds asked (the held-out categories)

    def chance(self, category: str) -> float:
        """Accuracy of a constant answer on a category (its items are balanced)."""
        return 1 / len(self.answers[category])


def draw(colour: str, shape: str, side: str, size: tuple, rng: random.Random):
    """A ``size`` (width, height) picture of one ``shape`` of ``colour`` in the outer
    quarter of ``side``; its size, place and shade vary with ``rng``."""
    from PIL import Image, ImageDraw

    width, height = size
    quarter = width // 4
    extent = int(rng.uniform(0.9, 1.0) * min(quarter, height))
    x = rng.randint(0, quarter - extent)
    if side == "right":
        x = width - extent - x
    y = rng.randint(0, height - extent)
    fill = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in COLOURS[colour])
    image = Image.new("RGB", size, BACKGROUND)
    pen = ImageDraw.Draw(image)
    box = [x, y, x + extent - 1, y + extent - 1]
    if shape == "circle":
        pen.ellipse(box, fill=fill)
    elif shape == "square":
        pen.rectangle(box, fill=fill)
    else:
        pen.polygon([(x + extent / 2, y), (x, y + extent - 1), (x + extent - 1, y + extent - 1)],
                    fill=fill)
    return image


def centre_crop(image):
    """The centred square a shortest-edge resize plus centre crop keeps."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def _random_item(rng: random.Random, colours: tuple) -> dict:
    return {"colour": rng.choice(colours), "shape": rng.choice(SHAPES), "side": rng.choice(SIDES)}


def build_visual_task(out_dir: str | Path, *, n_train: int = 240, n_heldout: int = 24,
                      size: tuple = (128, 64), kinds: tuple = tuple(QUESTIONS),
                      colours: tuple = tuple(COLOURS), seed: int = 0) -> VisualTask:
    """Write the task under ``out_dir``: ``n_train`` training pictures (a question of each
    of ``kinds`` on each) and ``n_heldout`` held-out items per kind, balanced over its
    answers (each on a picture of its own, the other attributes random); the shapes take
    the ``colours`` given (of :data:`COLOURS`)."""
    from PIL import Image

    out = Path(out_dir)
    for folder in ("images", "blank", "centre_crop"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    answers = {kind: colours if kind == "colour" else ANSWERS[kind] for kind in kinds}

    train = []
    for number in range(n_train):
        item = _random_item(rng, colours)
        name = f"images/train-{number:04d}.png"
        draw(item["colour"], item["shape"], item["side"], size, rng).save(out / name)
        order = list(kinds)
        rng.shuffle(order)
        turns = []
        for turn, kind in enumerate(order):
            turns += [{"from": "human", "value": ("<image>\n" if turn == 0 else "") + QUESTIONS[kind]},
                      {"from": "gpt", "value": item[kind]}]
        train.append({"id": f"train-{number:04d}", "image": name, "conversations": turns})
    (out / "train.json").write_text(json.dumps(train, indent=1))

    Image.new("RGB", size, BACKGROUND).save(out / "blank" / "blank.png")
    items, blank, cropped = [], [], []
    for kind in kinds:
        for number in range(n_heldout):
            item = {**_random_item(rng, colours), kind: answers[kind][number % len(answers[kind])]}
            name = f"heldout-{kind}-{number:03d}.png"
            picture = draw(item["colour"], item["shape"], item["side"], size, rng)
            picture.save(out / "images" / name)
            centre_crop(picture).save(out / "centre_crop" / name)
            row = {"question": QUESTIONS[kind], "answer": item[kind], "category": kind}
            items.append({"image": f"images/{name}", **row})
            blank.append({"image": "blank/blank.png", **row})
            cropped.append({"image": f"centre_crop/{name}", **row})
    paths = out / "heldout.jsonl", out / "heldout_blank.jsonl", out / "heldout_centre_crop.jsonl"
    for path, rows in zip(paths, (items, blank, cropped)):
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return VisualTask(out / "train.json", out, *paths, answers)


def build_task_llm(family: str, out_dir: str | Path, *, lm_head_std: float = 1.0,
                   seed: int = 0) -> Path:
    """A tiny ``family`` LLM with its synthetic tokenizer, every answer word added as one
    token (rows the model already has past the synthetic vocabulary, drawn like the
    embedding), and the used rows of an untied ``lm_head`` drawn with ``lm_head_std``."""
    import torch
    from transformers import AddedToken, AutoModelForCausalLM, AutoTokenizer

    from .tiny import build_tiny_llm

    out = build_tiny_llm(family, out_dir, real_tokenizer=False, seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(out)
    first = len(tokenizer)
    tokenizer.add_tokens([AddedToken(word, special=False, normalized=False)
                          for word in answer_words()])
    model = AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    if len(tokenizer) > embedding.weight.shape[0] or head is embedding:
        raise ValueError(f"{family}'s tiny model has {embedding.weight.shape[0]} rows "
                         f"{'tied to its lm_head' if head is embedding else ''}: the task's "
                         f"{len(tokenizer)} tokens need untied rows")
    generator = torch.Generator().manual_seed(seed)
    std = model.config.initializer_range
    with torch.no_grad():
        rows = embedding.weight[first:len(tokenizer)]
        rows.copy_(torch.randn(rows.shape, generator=generator) * std)
        head.weight[:len(tokenizer)] = torch.randn(
            (len(tokenizer), head.weight.shape[1]), generator=generator) * lm_head_std
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
