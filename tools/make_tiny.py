"""Build a tiny random LLaVA (LLM of a real architecture, CLIP, small LLaVA data set) on disk.

    python tools/make_tiny.py OUT_DIR [--family qwen|qwen2|qwen3|llama|phi3|internlm2]
                                      [--synthetic-tokenizer] [--tie-word-embeddings]

Prints the paths to pass to a config's path variables (`--cfg-options llm_name_or_path=...`).
"""
import argparse

from xtuner_llava_swap.testing.tiny import build_tiny_llava, tiny_families


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--family", choices=tiny_families(), default="qwen")
    parser.add_argument("--synthetic-tokenizer", action="store_true",
                        help="use a small synthetic tokenizer with the family's special tokens "
                             "instead of the real one from ../shared/fixtures")
    parser.add_argument("--tie-word-embeddings", action="store_true")
    args = parser.parse_args(argv)
    tiny = build_tiny_llava(args.family, args.out_dir,
                            real_tokenizer=False if args.synthetic_tokenizer else None,
                            tie_word_embeddings=args.tie_word_embeddings)
    print(f"llm_name_or_path={tiny.llm}")
    print(f"visual_encoder_name_or_path={tiny.visual_encoder}")
    print(f"pretrain data_path={tiny.pretrain_data_path}")
    print(f"finetune data_path={tiny.data_path}")
    print(f"image_folder={tiny.image_folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
