"""``check-data``: preflight check of LLaVA training data, before a long run.

    xtuner-llava-swap check-data CONFIG [--cfg-options k=v ...] [--out DIR]
    xtuner-llava-swap check-data --data FILE --tokenizer FOLDER --profile NAME \\
        [--image-folder DIR] (--vision-config PATH | --image-tokens N) [--max-length 2048]

(``python tools/check_data.py`` in a checkout is the same command.) Prints a table of
problems (samples that would be skipped, by reason), the sequence length percentiles with
the image tokens included, and how many samples ``max_length`` removes; writes
``lengths.png`` (histogram with the max_length line) and ``samples.html`` (trained tokens
green, masked grey, the image where it goes) to --out. The logic lives in
:mod:`xtuner_llava_swap.data.report`.
"""
import argparse
import sys

from mmengine.config import DictAction

from ..data import MAP_FNS
from ..data.encode import LENGTH_POLICIES
from ..data.image_tokens import resolve_image_token_count
from ..data.report import check_data, dataset_args_from_config
from ..data.validate import IMAGE_CHECKS

EXAMPLES = """\
examples:
  xtuner-llava-swap check-data my_run/llava_qwen2_5_7b_instruct_qlora.py --out work_dirs/check
  xtuner-llava-swap check-data --data data.jsonl --tokenizer Qwen/Qwen2.5-7B-Instruct \\
      --profile qwen2.5 --image-folder images --image-tokens 576"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="xtuner-llava-swap check-data", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Preflight check of LLaVA training data (problems, lengths, max_length "
                    "drops, PNG histogram, HTML view).")
    parser.add_argument("config", nargs="?", help="xtuner training config (its "
                        "train_dataloader.dataset is checked)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default=None,
                        help="override config values, as for xtuner train")
    parser.add_argument("--data", help="data file (.json / .jsonl) instead of a config")
    parser.add_argument("--tokenizer", help="tokenizer folder (with --data)")
    parser.add_argument("--profile", help="LLM profile giving the template and tokenizer "
                        "settings (with --data), e.g. qwen2.5")
    parser.add_argument("--image-folder", help="folder the image paths are relative to")
    parser.add_argument("--vision-config", help="vision encoder folder or config.json "
                        "(image token count)")
    parser.add_argument("--image-tokens", type=int, help="image token count, instead of "
                        "--vision-config")
    parser.add_argument("--format", choices=sorted(MAP_FNS), default="any_format_map_fn",
                        help="map function for --data (default: detect per sample)")
    parser.add_argument("--max-length", type=int, help="sequence budget with the image "
                        "tokens (default: the config's, else 2048)")
    parser.add_argument("--policy", choices=LENGTH_POLICIES, help="over-length policy")
    parser.add_argument("--max-images", type=int, default=1, help="images per sample the "
                        "model takes (xtuner's LLaVAModel: 1)")
    parser.add_argument("--check-images", choices=IMAGE_CHECKS, default="open")
    parser.add_argument("--allow-outside-image-folder", action="store_true",
                        help="accept image paths that leave --image-folder (../, absolute); "
                             "refused and counted by default")
    parser.add_argument("--samples", type=int, default=20, help="samples in the HTML view")
    parser.add_argument("--out", default="work_dirs/check_data", help="folder for the PNG "
                        "and the HTML (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if bool(args.config) == bool(args.data):
        parser.error("give either a CONFIG or --data")
    if args.data and not (args.tokenizer and args.profile):
        parser.error("--data needs --tokenizer and --profile")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    notes = []
    if args.config:
        options, notes = dataset_args_from_config(args.config, args.cfg_options)
    else:
        from ..profiles import template_map_fn_factory
        from ..training.tokenizers import tokenizer_dict

        options = dict(
            data_path=args.data, tokenizer=tokenizer_dict(args.profile, args.tokenizer),
            image_folder=args.image_folder, dataset_map_fn=args.format,
            template_map_fn=dict(type=template_map_fn_factory, template=args.profile),
            max_length=2048, length_policy="drop",
            image_tokens=resolve_image_token_count(args.image_tokens, args.vision_config))
    if args.max_length:
        options["max_length"] = args.max_length
    if args.policy:
        options["length_policy"] = args.policy
    if args.image_folder:
        options["image_folder"] = args.image_folder
    if args.allow_outside_image_folder:
        options["allow_outside_image_folder"] = True
    try:
        report = check_data(**options, max_images=args.max_images,
                            check_images=args.check_images, out_dir=args.out,
                            html_samples=args.samples, progress=not args.no_progress)
    except (ValueError, OSError) as err:  # a data file that cannot be read as a whole
        print(f"error: {err}", file=sys.stderr)
        return 1
    report.notes += notes
    print(report.text())
    return 0
