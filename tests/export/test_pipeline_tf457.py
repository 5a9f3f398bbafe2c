"""The `hf` export as a transformers 4.57 user takes it, in `.venv-tf457` and without
`import xtuner_llava_swap`: `pipeline("image-text-to-text")` and
`AutoProcessor.apply_chat_template` on a content-list image message give the greedy
tokens `--verify` got from xtuner's model."""
from __future__ import annotations

import json
import os
import subprocess

from support import TF457_PYTHON, requires_fixtures, requires_tf457

from xtuner_llava_swap.export.verify import VERIFY_PROMPT

SCRIPT = """
import json, sys
import torch, transformers
from transformers import AutoProcessor, LlavaForConditionalGeneration, pipeline
assert transformers.__version__.startswith("4.57"), transformers.__version__
assert "xtuner_llava_swap" not in sys.modules
out, image, prompt, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
messages = [{"role": "user", "content": [{"type": "image", "path": image},
                                         {"type": "text", "text": prompt}]}]
processor = AutoProcessor.from_pretrained(out)
model = LlavaForConditionalGeneration.from_pretrained(out, torch_dtype=torch.float32).eval()
inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                       return_dict=True, return_tensors="pt")
with torch.no_grad():
    ids = model.generate(**inputs, max_new_tokens=n, do_sample=False)
tokens = ids[0, inputs["input_ids"].shape[1]:].tolist()
pipe = pipeline("image-text-to-text", model=out, torch_dtype=torch.float32)
chat = [{"role": "user", "content": [{"type": "image", "url": image},
                                     {"type": "text", "text": prompt}]}]
text = pipe(text=chat, max_new_tokens=n, do_sample=False, return_full_text=False)
print("RESULT" + json.dumps({"tokens": tokens, "pipeline": text[0]["generated_text"],
                             "decoded": processor.decode(tokens, skip_special_tokens=True),
                             "modules": "xtuner_llava_swap" in sys.modules}))
"""


@requires_fixtures
@requires_tf457
def test_pipeline_and_chat_template_give_verify_tokens(verified_export, tmp_path):
    export = verified_export("qwen2.5")  # the same folder the transformers 5 test loads
    summary = export.summary
    assert summary["serving"]["ready"] and summary["serving"]["server"] == "vLLM"
    verified = summary["verify"]["tokens"]
    proc = subprocess.run([str(TF457_PYTHON), "-c", SCRIPT, str(export.folder), str(export.image),
                           VERIFY_PROMPT, str(len(verified))],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert not result["modules"]
    assert result["tokens"] == verified
    assert result["pipeline"] == result["decoded"] and result["decoded"].strip()
