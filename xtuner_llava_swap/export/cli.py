"""Command line of the export: ``xtuner-llava-swap convert`` (also ``xtuner-llava-swap-convert``
and ``tools/convert_to_hf.py``; the usage line names the program that ran).

Argument parsing and printing only; the work is :func:`xtuner_llava_swap.export.convert`,
and, for ``check OUT_DIR``, :func:`xtuner_llava_swap.export.serving.check_folder`.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from .convert import DTYPES, FORMATS, convert
from ..errors import ExportError

DESCRIPTION = """\
Export an xtuner LLaVA checkpoint (iter_N.pth file, DeepSpeed ZeRO-1/2/3 directory, or an
`xtuner convert pth_to_hf` folder) as a Hugging Face LlavaForConditionalGeneration folder
(--format hf) or an official LLaVA folder (--format llava: LlavaLlamaForCausalLM /
LlavaQwenForCausalLM). LoRA and QLoRA adapters are merged in fp32 into the base weights read
from the base model path CONFIG names. OUT_DIR is written through a temporary folder beside
it and appears only when complete. OUT_DIR may not be or contain any input (CHECKPOINT,
the run's work dir, CONFIG, the base LLM, the vision tower) nor lie inside a DeepSpeed
checkpoint directory; a new folder beside the checkpoint (work_dirs/run/iter_8_hf) is fine.
--force replaces only a previous export of this tool. SIGTERM/SIGHUP/Ctrl-C leave OUT_DIR unchanged.
The LLM profile is --profile, else the one training recorded beside CHECKPOINT
(xtuner_llava_swap_run.json), else CONFIG's tokenizer profile; a --profile that differs
from the record wins, with a warning.

`check OUT_DIR [--profile NAME]` checks an export folder against what vLLM (hf) or SGLang
(llava) demand, and says what to change; --verify prints the same report."""

EXAMPLES = """\
examples (`xtuner-llava-swap convert`, `xtuner-llava-swap-convert` and, in a checkout,
`python tools/convert_to_hf.py` are the same command):
  xtuner-llava-swap convert my_run/llava_qwen2_5_7b_instruct_qlora.py \\
      work_dirs/llava_qwen2_5_7b_instruct_qlora/iter_5198.pth \\
      work_dirs/llava_qwen2_5_7b_instruct_qlora/iter_5198_hf --verify
  xtuner-llava-swap convert CONFIG CHECKPOINT llava-official --format llava --dtype bfloat16
  xtuner-llava-swap convert check work_dirs/llava_qwen2_5_7b_instruct_qlora/iter_5198_hf"""


def build_parser() -> argparse.ArgumentParser:
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(description=DESCRIPTION, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="the xtuner config the run was trained with")
    parser.add_argument("checkpoint", help="iter_N.pth file or directory, or pth_to_hf folder")
    parser.add_argument("out_dir", help="folder to create (refused if it exists, see --force)")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="hf",
                        help="hf: transformers LLaVA (default); llava: official LLaVA layout")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None,
                        help="weight dtype of the export (default: the base LLM's torch_dtype)")
    parser.add_argument("--max-shard-size", default="2GB",
                        help="largest safetensors shard, e.g. 2GB, 500MB (default 2GB)")
    parser.add_argument("--verify", action="store_true",
                        help="compare logits and greedy tokens with xtuner's model of the run "
                             "on a one-image prompt, and also on a two-image prompt when the "
                             "run trains with several images per sample (its dataset's "
                             "max_images > 1)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing OUT_DIR (only once the new one is complete)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow the base LLM's remote code (also allowed when the "
                             "profile says so, e.g. Qwen-7B)")
    parser.add_argument("--profile", default=None,
                        help="LLM profile name (default: the one recorded beside CHECKPOINT, "
                             "else CONFIG's tokenizer profile; wins over both, with a warning "
                             "when it differs from the record)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default=None,
                        help="override CONFIG settings, key=value (as in xtuner train)")
    parser.add_argument("--vision-tower-id", default=None,
                        help="hub id of the base vision tower for mm_vision_tower (--format "
                             "llava; default: the id its config records, if any); needed "
                             "for SigLIP, which LLaVA-NeXT (the only official loader with "
                             "a SigLIP tower) loads by hub id from the Hugging Face cache")
    parser.add_argument("--upstream", default=None,
                        help="with --verify --format llava: a haotian-liu/LLaVA or LLaVA-NeXT "
                             "checkout (or a folder of them) whose load_pretrained_model also "
                             "loads the export (default: ../shared/fixtures/upstream if found)")
    parser.add_argument("--pretrain-checkpoint", action="store_true",
                        help="CHECKPOINT is a projector-only pretrain checkpoint: accept it "
                             "although CONFIG trains LoRA (base weights exported unchanged)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def check_main(argv) -> int:
    """``check OUT_DIR``: the serving-readiness report; exit 1 when a demand fails."""
    from .serving import check_folder, folder_format, folder_tokenizer, format_report

    parser = argparse.ArgumentParser(prog=f"{Path(sys.argv[0]).name} check",
                                     description="check an export folder for vLLM (hf) or "
                                                 "SGLang (llava)",
                                     epilog="example:\n  xtuner-llava-swap convert check "
                                            "work_dirs/run/iter_8_hf --profile qwen2.5",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="an export folder")
    parser.add_argument("--profile", default=None,
                        help="LLM profile: generation_config's eos ids must be its stop ids")
    args = parser.parse_args(argv)
    try:
        stop_ids = None
        folder_format(Path(args.out_dir))  # a clear error when it is no export folder
        if args.profile:
            from xtuner_llava_swap.profiles import get_profile

            stop_ids = get_profile(args.profile).stop_token_ids(
                folder_tokenizer(Path(args.out_dir)))
        report = check_folder(args.out_dir, stop_ids)
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_report(report))
    return 0 if report["ready"] else 1


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["check"]:
        return check_main(argv[1:])
    args = build_parser().parse_args(argv)
    upstream = args.upstream
    if upstream is None and args.verify and args.fmt == "llava":
        from .upstream import default_upstream

        upstream = default_upstream()
    try:
        summary = convert(args.config, args.checkpoint, args.out_dir, fmt=args.fmt,
                          dtype=args.dtype, max_shard_size=args.max_shard_size,
                          verify=args.verify, force=args.force,
                          trust_remote_code=args.trust_remote_code,
                          cfg_options=args.cfg_options, profile=args.profile,
                          progress=not args.no_progress,
                          vision_tower_id=args.vision_tower_id, upstream=upstream,
                          pretrain_checkpoint=args.pretrain_checkpoint)
    except (ExportError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM/SIGHUP (ExportInterrupted)
        name = getattr(err, "signal_name", "SIGINT")
        print(f"error: interrupted ({name}); the temporary folder was removed and OUT_DIR "
              f"{args.out_dir} was not changed", file=sys.stderr)
        return 128 + int(getattr(signal, name, signal.SIGINT))
    print(json.dumps(summary, indent=2, default=str))
    if "serving" in summary:
        from .serving import format_report

        print(format_report(summary["serving"]), file=sys.stderr)
    if "note" in summary.get("vision_tower", {}):
        print(f"note: {summary['vision_tower']['note']}", file=sys.stderr)
    return 0
