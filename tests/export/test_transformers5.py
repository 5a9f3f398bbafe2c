"""The `hf` export as a transformers 5 user takes it: in `.venv-tf5` (the newest
transformers 5.x and a CPU torch, no xtuner, no xtuner_llava_swap), the folders of a Qwen2.5
and a Llama-3.1-Instruct run load with ``AutoProcessor`` and
``LlavaForConditionalGeneration`` and generate the greedy tokens ``--verify`` got from
xtuner's model, and so does ``pipeline("image-text-to-text")``. The folder's
``chat_template.jinja`` (the file transformers 5 reads and writes) is the profile's template,
and transformers 5's processor and tokenizer render a training conversation as the ids
training used."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from support import TF5_PYTHON, requires_fixtures, requires_tf5

from xtuner_llava_swap.export.verify import VERIFY_PROMPT
from xtuner_llava_swap.profiles import get_profile
from xtuner_llava_swap.token_contract import IMAGE_TOKEN_INDEX

# A two-turn conversation with an image and a system prompt, as training data has it
SYSTEM = "Answer in one sentence."
SAMPLE = {"image": "shapes.png", "conversations": [
    {"from": "human", "value": "<image>\nWhat is in the picture?"},
    {"from": "gpt", "value": "A red square on grey."},
    {"from": "human", "value": "Which colour is the square?"},
    {"from": "gpt", "value": "Red."}]}
MESSAGES = [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": [{"type": "image"},
                                         {"type": "text", "text": "What is in the picture?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A red square on grey."}]},
            {"role": "user", "content": [{"type": "text", "text": "Which colour is the square?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Red."}]}]

SCRIPT = """
import importlib.util, json, sys
import torch, transformers
from transformers import AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration, pipeline
assert transformers.__version__.startswith("5."), transformers.__version__
assert importlib.util.find_spec("xtuner") is None
assert importlib.util.find_spec("xtuner_llava_swap") is None
out, image, prompt, n, messages = (sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]),
                                   json.loads(sys.argv[5]))
processor = AutoProcessor.from_pretrained(out)
model = LlavaForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
asked = [{"role": "user", "content": [{"type": "image", "path": image},
                                      {"type": "text", "text": prompt}]}]
inputs = processor.apply_chat_template(asked, add_generation_prompt=True, tokenize=True,
                                       return_dict=True, return_tensors="pt")
with torch.no_grad():
    ids = model.generate(**inputs, max_new_tokens=n, do_sample=False)
tokens = ids[0, inputs["input_ids"].shape[1]:].tolist()
pipe = pipeline("image-text-to-text", model=out, dtype=torch.float32)
chat = [{"role": "user", "content": [{"type": "image", "url": image},
                                     {"type": "text", "text": prompt}]}]
text = pipe(text=chat, max_new_tokens=n, do_sample=False, return_full_text=False)
tokenizer = AutoTokenizer.from_pretrained(out)
text_messages = [{"role": m["role"], "content": "".join(
    "<image>\\n" if c["type"] == "image" else c["text"] for c in m["content"])}
    if isinstance(m["content"], list) else m for m in messages]
rendered = processor.apply_chat_template(messages, tokenize=False)
print("RESULT" + json.dumps({
    "tokens": tokens, "pipeline": text[0]["generated_text"],
    "decoded": processor.decode(tokens, skip_special_tokens=True),
    "processor_template": processor.chat_template, "tokenizer_template": tokenizer.chat_template,
    "processor_ids": processor.tokenizer(rendered, add_special_tokens=False)["input_ids"],
    "tokenizer_ids": tokenizer.apply_chat_template(text_messages, tokenize=True,
                                                   return_dict=False),
    "image_id": tokenizer.convert_tokens_to_ids("<image>"),
    "version": transformers.__version__}))
"""


def training_ids(export) -> list:
    """The ids xtuner's pipeline trains on for :data:`SAMPLE` with :data:`SYSTEM`."""
    from xtuner.registry import BUILDER

    from xtuner_llava_swap.training.tokenizers import encode_llava_conversation, tokenizer_dict

    tokenizer = BUILDER.build(tokenizer_dict(export.profile,
                                             export.run.cfg_options["llm_name_or_path"]))
    return encode_llava_conversation(SAMPLE, tokenizer, export.profile,
                                     system=SYSTEM)["input_ids"]


@requires_fixtures
@requires_tf5
@pytest.mark.parametrize("name", ["qwen2.5", "llama3.1"])
def test_transformers5_loads_the_export_and_generates_verified_tokens(verified_export, name,
                                                                      tmp_path):
    export = verified_export(name)
    verified = export.summary["verify"]["tokens"]
    template = get_profile(export.profile).chat_template()
    assert (export.folder / "chat_template.jinja").read_text() == template
    proc = subprocess.run([str(TF5_PYTHON), "-c", SCRIPT, str(export.folder), str(export.image),
                           VERIFY_PROMPT, str(len(verified)), json.dumps(MESSAGES)],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert result["tokens"] == verified
    assert result["pipeline"] == result["decoded"] and result["decoded"].strip()
    assert result["processor_template"] == template == result["tokenizer_template"]
    expected = training_ids(export)
    for ids in (result["processor_ids"], result["tokenizer_ids"]):
        assert [IMAGE_TOKEN_INDEX if i == result["image_id"] else i for i in ids] == expected
