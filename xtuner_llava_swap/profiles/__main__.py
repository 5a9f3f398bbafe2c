"""``python -m xtuner_llava_swap.profiles [NAME]``: list the LLM profiles and the vision
towers, or show one in full."""
from __future__ import annotations

import argparse
import json

from . import UnknownProfileError, get_profile, list_profiles


def describe(name: str) -> str:
    from ..towers import TOWERS

    if name in TOWERS:
        return describe_tower(TOWERS[name])
    p = get_profile(name)
    family = p.family
    fields = dict(name=p.name, family=family.name, example=p.hf_example, has_bos=p.has_bos,
                  end_of_turn=p.end_of_turn, stop_words=list(p.stop_words),
                  default_system=p.default_system, tokenizer_kwargs=dict(p.tokenizer_kwargs),
                  trust_remote_code=p.trust_remote_code,
                  lora_target_modules=list(p.lora_target_modules),
                  hf_text_model_type=family.hf_text_model_type,
                  official_llava_class=family.official_llava_class or family.no_official_llava,
                  weight_names=("mapped on export" if family.weight_table else "kept"),
                  stack=family.stack, last_reply_prefix=p.last_reply_prefix,
                  always_system_block=p.always_system_block,
                  reasoning_tags=list(p.reasoning_tags),
                  template={k: v for k, v in p.template.items()})
    return json.dumps(fields, indent=2, ensure_ascii=False)


def describe_tower(tower) -> str:
    fields = {k: v for k, v in vars(tower).items() if not callable(v)}
    fields.update(tokens_per_image=tower.tokens_per_image, hf_select_strategy=tower.hf_select_strategy,
                  pad_colour=tower.pad_colour)
    return json.dumps(fields, indent=2, ensure_ascii=False)


def tower_table() -> str:
    from ..towers import TOWERS

    rows = [("vision tower", "example model", "tokens/image", "class token", "features")]
    for tower in TOWERS.values():
        rows.append((tower.name, tower.hf_example, str(tower.tokens_per_image),
                     "yes (dropped)" if tower.class_token else "no", tower.hf_select_strategy))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def table() -> str:
    rows = [("name", "family", "example model", "end of turn", "stack", "default system")]
    for name in list_profiles():
        p = get_profile(name)
        rows.append((p.name, p.family.name, p.hf_example, p.end_of_turn, p.family.stack,
                     p.default_system or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5]
                     for r in rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="xtuner-llava-swap profiles",
        description="List the LLM profiles and vision towers, or show one in full.",
        epilog="examples:\n  xtuner-llava-swap profiles\n  xtuner-llava-swap profiles qwen2.5\n"
               "  xtuner-llava-swap profiles siglip-so400m-384",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", help="a profile or tower name: print all its fields as JSON")
    args = parser.parse_args(argv)
    try:
        print(describe(args.name) if args.name else table() + "\n\n" + tower_table())
    except UnknownProfileError as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()
