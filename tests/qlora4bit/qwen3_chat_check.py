"""Run in ``.venv-tf457`` by test_qwen3_e2e.py: the chat tool on a Qwen3 run.

    python qwen3_chat_check.py IMAGE K MODEL --config CONFIG --cfg-options ...

(the arguments after K are chat's own, parsed by its parser). For each Qwen3 profile, as
``--profile`` picks it: the prompt of a multi-turn conversation, and the text of a one-turn
image prompt, next to what the LLM tokenizer's own chat template renders with
``enable_thinking`` off (``qwen3``) and on (``qwen3-thinking``); a reply forced to end with
``<|im_end|>`` after K tokens (it must stop there) and a free greedy one. Then the run
loaded with ``--load-in-4bit`` on the CPU: the bitsandbytes modules of its LLM and a reply;
and chat's command line with each profile and with ``--load-in-4bit``. Prints one JSON line.
"""
import io
import json
import sys

from PIL import Image
from transformers import AutoTokenizer

from xtuner_llava_swap.inference import chat_cli
from xtuner_llava_swap.inference.loading import load_generator
from xtuner_llava_swap.inference.prompt import one_turn

IMAGE, K, ARGV = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
args = chat_cli.build_parser().parse_args(ARGV)
image = Image.open(IMAGE).convert("RGB")
TURNS = [{"role": "user", "content": "What is in the picture?"},
         {"role": "assistant", "content": "A red square."},
         {"role": "user", "content": "Which one is larger?"}]
QUESTION = "What is in the picture?"
tokenizer = AutoTokenizer.from_pretrained(args.cfg_options["llm_name_or_path"])
im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")


def load(profile, **kwargs):
    return load_generator(args.model, args.config, cfg_options=args.cfg_options,
                          device="cpu", profile=profile, **kwargs)


def replies(generator, prompt) -> dict:
    forced = generator.generate([prompt], max_new_tokens=8, min_new_tokens=K - 1,
                                sequence_bias=[[[im_end], 1000.0]])[0]
    free = generator.generate([prompt], max_new_tokens=4)[0]
    return dict(forced_ids=list(forced.token_ids), forced_stop=forced.stop_word,
                forced_answer=forced.answer, free_ids=list(free.token_ids))


def chat(*extra) -> tuple:
    out = io.StringIO()
    status = chat_cli.main([*ARGV, "--prompt", QUESTION, "--image", IMAGE,
                            "--max-new-tokens", "4", "--device", "cpu", *extra],
                           stdin=io.StringIO(""), stdout=out)
    return status, out.getvalue()


facts = {"im_end": im_end, "chat_template_thinks": "enable_thinking" in tokenizer.chat_template}
for profile, thinking in (("qwen3", False), ("qwen3-thinking", True)):
    generator = load(profile)
    with_image = generator.render(one_turn(QUESTION, image))
    facts[profile] = dict(
        profile=generator.profile.name, stop_ids=generator.stop_ids,
        ids=generator.render(TURNS).ids,
        template_ids=tokenizer.apply_chat_template(TURNS, tokenize=True,
                                                   add_generation_prompt=True,
                                                   enable_thinking=thinking),
        text=with_image.text, image_places=with_image.ids.count(-200),
        template_text=tokenizer.apply_chat_template(
            [{"role": "user", "content": f"<image>\n{QUESTION}"}], tokenize=False,
            add_generation_prompt=True, enable_thinking=thinking),
        cli=chat("--profile", profile), **replies(generator, with_image))
    del generator

import bitsandbytes as bnb  # noqa: E402

generator = load("qwen3", load_in_4bit=True)
four_bit = [name for name, module in generator.model.llm.named_modules()
            if isinstance(module, bnb.nn.Linear4bit)]
facts["4bit"] = dict(
    linear4bit=four_bit,
    quant_types=sorted({generator.model.llm.get_submodule(name).weight.quant_type
                        for name in four_bit}),
    other_linears=[name for name, module in generator.model.llm.named_modules()
                   if type(module).__name__ == "Linear" and "lora_" not in name],
    cli=chat("--load-in-4bit"),
    **replies(generator, generator.render(one_turn(QUESTION, image))))
print(json.dumps(facts))
