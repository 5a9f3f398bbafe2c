"""``tools/chat.py`` / ``xtuner-llava-swap chat``: talk to a run or an export.

    xtuner-llava-swap chat MODEL [--config CONFIG] [--prompt TEXT [--image PATH ...]]

MODEL is a checkpoint with ``--config`` (the run, its trained LoRA live, no export) or an
export folder (``hf`` or ``llava``). The prompt is the run's training format (its profile,
its default system prompt unless ``--system``), rendered by :mod:`.prompt` on the whole
history each turn. With ``--prompt`` it answers once and exits; without, it reads turns
from stdin and streams the replies. In the interactive mode ``/image PATH`` adds an image
to the next turn, ``/reset`` starts a new conversation, ``/exit`` (or end of input) quits.
A Qwen3 run thinks as its profile says (``qwen3``: no thinking, ``qwen3-thinking``:
thinking); ``--profile`` picks the other profile of the same family.
"""
from __future__ import annotations

import argparse
import sys

EXAMPLE = """examples:
  xtuner-llava-swap chat work_dirs/run/iter_500.pth --config configs/llava_qwen2_5_7b_instruct_qlora.py \\
      --image photo.jpg --prompt "What is in the picture?"
  xtuner-llava-swap chat exports/hf          # interactive: /image PATH, /reset, /exit"""


def build_parser() -> argparse.ArgumentParser:
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=EXAMPLE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL",
                        help="a checkpoint (with --config) or an export folder (hf or llava)")
    parser.add_argument("--config", help="the run's CONFIG (MODEL is then its checkpoint)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default=None,
                        help="override CONFIG settings, as in `xtuner train`")
    parser.add_argument("--prompt", help="answer this one prompt, print and exit")
    parser.add_argument("--image", action="append", default=[],
                        help="an image for --prompt (repeat for several)")
    parser.add_argument("--system", default=None,
                        help="system prompt (default: the run's; '' for none)")
    parser.add_argument("--profile", default=None,
                        help="prompt profile override of the same family (e.g. qwen3-thinking)")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0 (default): greedy; > 0: sampling")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    parser.add_argument("--load-in-4bit", action="store_true",
                        help="load the LLM in 4-bit (bitsandbytes nf4), where bitsandbytes "
                             "quantizes on --device (CUDA; also a CPU with e.g. "
                             "bitsandbytes 0.50); refused in one line elsewhere")
    parser.add_argument("--trust-remote-code", action="store_true")
    return parser


def _image(path: str):
    from PIL import Image

    from .loading import InferenceError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as err:
        raise InferenceError(f"image {path} cannot be read ({type(err).__name__}: {err}); "
                             "give a path to a picture") from None


class _Printer:
    """A streamer printing new text as it comes (the stop word left out)."""

    def __init__(self, generator, out):
        self.generator, self.out = generator, out
        self.ids, self.printed, self.first = [], "", True

    def put(self, value):
        if self.first:  # generate hands the prompt first
            self.first = False
            return
        self.ids += [int(token) for token in value.reshape(-1).tolist()
                     if int(token) not in self.generator.stop_ids]
        text = self.generator.decode(self.ids)
        if not text.endswith("\ufffd"):  # an incomplete character waits for its next token
            self.out.write(text[len(self.printed):])
            self.out.flush()
            self.printed = text

    def end(self):
        self.out.write("\n")
        self.out.flush()


def _generate(generator, messages, args, streamer=None):
    return generator.generate([messages], max_new_tokens=args.max_new_tokens,
                              temperature=args.temperature, top_p=args.top_p,
                              streamer=streamer)[0]


def interactive(generator, args, stdin, stdout) -> int:
    from .loading import InferenceError
    from .prompt import ImagePromptError

    messages, pending = [], []
    stdout.write(f"chat with {generator.source} (profile {generator.profile.name}); "
                 "/image PATH, /reset, /exit\n")
    while True:
        stdout.write(">>> ")
        stdout.flush()
        line = stdin.readline()
        if not line or line.strip() == "/exit":
            return 0
        line = line.rstrip("\n")
        if line.startswith("/image "):
            try:
                pending.append(_image(line[len("/image "):].strip()))
                stdout.write(f"[image added to the next turn: {len(pending)} pending]\n")
            except InferenceError as err:
                stdout.write(f"error: {err}\n")
            continue
        if line.strip() == "/reset":
            messages, pending = [], []
            stdout.write("[new conversation]\n")
            continue
        if not line.strip():
            continue
        turn = {"role": "user", "content": line, "images": pending}
        try:
            prompt = generator.render(messages + [turn], what="your turn")
        except ImagePromptError as err:
            stdout.write(f"error: {err}\n")
            continue
        reply = _generate(generator, prompt, args, _Printer(generator, stdout))
        messages += [turn, {"role": "assistant", "content": reply.answer}]
        pending = []


def main(argv=None, stdin=None, stdout=None) -> int:
    from ..errors import ExportError
    from .loading import InferenceError, load_generator
    from .prompt import ImagePromptError, one_turn

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    args = build_parser().parse_args(argv)
    try:
        images = [_image(path) for path in args.image]
        if images and args.prompt is None:
            raise InferenceError("--image goes with --prompt; in the interactive mode type "
                                 "/image PATH before a turn")
        generator = load_generator(args.model, args.config, cfg_options=args.cfg_options,
                                   dtype=args.dtype, device=args.device,
                                   load_in_4bit=args.load_in_4bit,
                                   trust_remote_code=args.trust_remote_code,
                                   system=args.system, profile=args.profile)
        if args.prompt is not None:
            prompt = generator.render(one_turn(args.prompt, images), what="--prompt")
            stdout.write(_generate(generator, prompt, args).answer + "\n")
            return 0
    except (InferenceError, ExportError, ImagePromptError, OSError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return interactive(generator, args, stdin, stdout)
