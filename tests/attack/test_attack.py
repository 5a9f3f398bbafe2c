"""The attack list as a table: each row is one hostile or careless input and the outcome
it must get. The next attack is one more row.

Converter rows (``EXPORT_ATTACKS``) run :func:`convert` (or the command line in a real
subprocess, for signals and write errors) on the tiny Qwen2.5 run of
``tests/export/conftest.py``; after every row the run's inputs are unchanged and no
temporary folder is left. Data rows (``DATA_ATTACKS``) run :class:`LLaVASwapDataset` on
a small jsonl with the attack in sample 1 between good samples; the outcome is the
``reason@index`` of what was skipped, or the error.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from support import REPO, requires_fixtures

from xtuner_llava_swap.export import ExportError, convert
from xtuner_llava_swap.export.convert import EXPORT_MARKER


# =========================================================================== converter
class ExportCase:
    """One converter attack's working set: a private copy of the run (so a failing
    guard can only destroy copies), and a record of every input to compare afterwards."""

    def __init__(self, tmp: Path, run, tiny_parts, swap_options):
        self.tmp = tmp
        self.work_dir = tmp / "work_dir"
        self.work_dir.mkdir()
        self.checkpoint = self.work_dir / "iter_1.pth"
        shutil.copyfile(run.checkpoint, self.checkpoint)
        (self.work_dir / "last_checkpoint").write_text(str(self.checkpoint))
        self.llm = tmp / "qwen2"
        shutil.copytree(tiny_parts("qwen2"), self.llm)
        self.clip = tiny_parts("clip")
        self.config = run.config
        self.options = swap_options("qwen2.5", self.llm, self.clip)
        self.exports = []  # exports a row makes inside an input's folder (not inputs)
        self.before = self.fingerprint()

    def fingerprint(self) -> dict:
        return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
                for root in (self.work_dir, self.llm) for p in sorted(root.rglob("*"))
                if p.is_file() and not any(p.is_relative_to(e) for e in self.exports)}

    def convert(self, out, checkpoint=None, **kwargs) -> str:
        """``ok`` or ``error: <message>``."""
        try:
            convert(self.config, checkpoint or self.checkpoint, out, cfg_options=self.options,
                    progress=False, **kwargs)
        except ExportError as err:
            return f"error: {err}"
        return "ok"

    def cli(self, out, *extra) -> subprocess.Popen:
        """The command line in a real subprocess, with the same options (dotted keys)."""
        options = []
        for key, value in self.options.items():
            items = ({f"{key}.{k}": v for k, v in value.items() if k not in ("_delete_", "type")}
                     if isinstance(value, dict) else {key: value})
            options += [f"{k}=[{','.join(v)}]" if isinstance(v, list) else f"{k}={v}"
                        for k, v in items.items()]
        cmd = [sys.executable, str(REPO / "tools" / "convert_to_hf.py"), str(self.config),
               str(self.checkpoint), str(out), "--no-progress", *extra, "--cfg-options",
               *options]
        return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    def save_state(self, name: str, edit) -> Path:
        state = torch.load(self.checkpoint, weights_only=True)
        edit(state["state_dict"])
        path = self.tmp / name
        torch.save(state, path)
        return path

    def leftovers(self) -> list:
        return sorted(str(p) for p in self.tmp.rglob(".*") if ".partial-" in p.name
                      or ".replaced-" in p.name)


def _wait_for(predicate, timeout: float = 300.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def out_is_work_dir(case):
    return case.convert(case.work_dir, force=True)


def out_is_checkpoint(case):
    return case.convert(case.checkpoint, force=True)


def out_is_base_llm(case):
    return case.convert(case.llm, force=True)


def new_out_inside_work_dir(case):
    """What xtuner users' scripts do: export beside the checkpoint, in the work dir, then
    again over that export with --force."""
    out = case.work_dir / "iter_1_hf"
    case.exports.append(out)
    assert case.convert(out) == "ok"
    assert (out / EXPORT_MARKER).is_file() and (out / "config.json").is_file()
    return case.convert(out, force=True)


def new_out_inside_base_llm(case):
    """A new folder inside an input's folder overwrites nothing."""
    out = case.llm / "export"
    case.exports.append(out)
    return case.convert(out)


def out_inside_deepspeed_checkpoint(case):
    """A DeepSpeed checkpoint directory is every file in it: nothing is written there."""
    deepspeed_dir = case.work_dir / "iter_2.pth"
    deepspeed_dir.mkdir()
    (deepspeed_dir / "mp_rank_00_model_states.pt").write_bytes(b"rank 0")
    case.before = case.fingerprint()
    return case.convert(deepspeed_dir / "hf", deepspeed_dir)


def out_contains_inputs(case):
    return case.convert(case.tmp, force=True)


def force_over_a_folder_that_is_no_export(case):
    mine = case.tmp / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    outcome = case.convert(mine, force=True)
    assert (mine / "notes.txt").read_text() == "keep me"
    return outcome


def force_over_a_previous_export(case):
    out = case.tmp / "export"
    assert case.convert(out) == "ok" and (out / EXPORT_MARKER).is_file()
    (out / "config.json").write_text("{}")  # tell the old export from the new one
    outcome = case.convert(out, force=True)
    assert json.loads((out / "config.json").read_text())["model_type"] == "llava"
    return outcome


def rename_fails_while_replacing(case, monkeypatch):
    """The kernel's atomic exchange unavailable and the second rename failing (injected:
    no real file system fails on demand): the old export must be back under OUT_DIR."""
    import importlib

    convert_module = importlib.import_module("xtuner_llava_swap.export.convert")
    out = case.tmp / "export"
    assert case.convert(out) == "ok"
    (out / "config.json").write_text('{"old": true}')
    real_rename = Path.rename
    monkeypatch.setattr(convert_module, "_exchange", lambda a, b: False)

    def rename(self, target):
        if ".partial-" in self.name:
            raise OSError(5, "Input/output error", str(self))
        return real_rename(self, target)
    monkeypatch.setattr(Path, "rename", rename)
    outcome = case.convert(out, force=True)
    assert json.loads((out / "config.json").read_text()) == {"old": True}
    return outcome


def bad_max_shard_size(case):
    return case.convert(case.tmp / "out", max_shard_size="2 gigabytes")


def unknown_profile(case):
    return case.convert(case.tmp / "out", profile="no-such-llm")


def parent_not_writable(case):
    """/proc refuses new folders even to root (chmod does not stop root)."""
    return case.convert(Path("/proc/self/xtuner-llava-swap-export"))


def disk_full_while_writing(case):
    """A real write error from the kernel (RLIMIT_FSIZE: EFBIG, as a full disk's ENOSPC)."""
    import resource

    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, limits[1]))
    try:
        outcome = case.convert(case.tmp / "out")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert not (case.tmp / "out").exists()
    return outcome


def interrupted_by(signal_name):
    def attack(case):
        out = case.tmp / "out"
        proc = case.cli(out)
        partial = lambda: any(p.name.startswith(".out.partial-") for p in case.tmp.iterdir())  # noqa: E731
        _wait_for(lambda: partial() or proc.poll() is not None)
        proc.send_signal(getattr(signal, signal_name))
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 128 + getattr(signal, signal_name), stderr[-2000:]
        assert not out.exists() and "Traceback" not in stderr
        return stderr.strip().splitlines()[-1]
    attack.__name__ = f"{signal_name}_mid_export"
    return attack


def killed_then_run_again(case):
    """SIGKILL cannot be caught: the next export to the same OUT_DIR removes the folder."""
    out = case.tmp / "out"
    proc = case.cli(out)
    found = []
    _wait_for(lambda: found.extend(p for p in case.tmp.iterdir() if ".partial-" in p.name)
              or found or proc.poll() is not None)
    proc.kill()
    proc.wait()
    assert found and found[0].exists()
    summary = convert(case.config, case.checkpoint, out, cfg_options=case.options,
                      progress=False)
    assert summary["removed_stale"] == [str(found[0])] and not found[0].exists()
    return "ok"


def empty_checkpoint(case):
    (case.tmp / "empty.pth").write_bytes(b"")
    return case.convert(case.tmp / "out", case.tmp / "empty.pth")


def random_bytes_checkpoint(case):
    (case.tmp / "random.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    return case.convert(case.tmp / "out", case.tmp / "random.pth")


class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def pickle_that_runs_a_command(case):
    marker = case.tmp / "pwned"
    torch.save({"state_dict": {"x": _RunsACommand(marker)}}, case.tmp / "evil.pth")
    outcome = case.convert(case.tmp / "out", case.tmp / "evil.pth")
    assert not marker.exists()
    return outcome


def _lora_key(state, module="q_proj", which="A", layer=0):
    return next(k for k in state if f"layers.{layer}." in k and f"{module}.lora_{which}" in k
                and k.startswith("llm."))


def extra_layer(case):
    def add(state):
        for which in "AB":
            key = _lora_key(state, which=which)
            state[key.replace("layers.0.", "layers.7.")] = state[key].clone()
    return case.convert(case.tmp / "out", case.save_state("extra.pth", add))


def one_lora_pair_missing(case):
    def drop(state):
        for which in "AB":
            del state[_lora_key(state, module="v_proj", which=which, layer=1)]
    return case.convert(case.tmp / "out", case.save_state("missing_pair.pth", drop))


def no_llm_lora_at_all(case):
    def drop(state):
        for key in [k for k in state if k.startswith("llm.") and ".lora_" in k]:
            del state[key]
    return case.convert(case.tmp / "out", case.save_state("no_lora.pth", drop))


def pretrain_checkpoint_said_so(case):
    def keep_projector(state):
        for key in [k for k in state if not k.startswith("projector.")]:
            del state[key]
    pretrain = case.save_state("pretrain.pth", keep_projector)
    assert case.convert(case.tmp / "refused", pretrain).startswith("error: ")
    return case.convert(case.tmp / "out", pretrain, pretrain_checkpoint=True)


def projector_of_another_shape(case):
    def widen(state):
        weight = state["projector.model.0.weight"]
        state["projector.model.0.weight"] = torch.zeros(weight.shape[0], weight.shape[1] + 8)
    return case.convert(case.tmp / "out", case.save_state("projector.pth", widen), verify=True)


def lora_of_another_llm_same_shapes(case, tiny_parts, swap_options):
    """A Qwen2 LoRA checkpoint converted with a Vicuna CONFIG: the checkpoint's recorded
    config (mmengine's meta["cfg"], here its ``model`` part) names the LLM it was trained
    with."""
    state = torch.load(case.checkpoint, weights_only=True)
    state["meta"]["cfg"] = (f"model = dict(\n    llm=dict(pretrained_model_name_or_path="
                            f"{str(case.llm)!r}),\n    visual_encoder=dict(pretrained_model_"
                            f"name_or_path={str(case.clip)!r}))\n")
    torch.save(state, case.tmp / "recorded.pth")
    case.options = swap_options("vicuna-v1.5", tiny_parts("llama"), case.clip)
    return case.convert(case.tmp / "out", case.tmp / "recorded.pth", verify=True)


def hostile_auto_map_with_verify(case):
    """The base LLM folder's config.json maps AutoConfig to code that writes a file;
    --verify builds xtuner's LLaVAModel, which asked for remote code unconditionally."""
    marker = case.tmp / "remote-code-ran"
    (case.llm / "configuration_evil.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import Qwen2Config\n"
        "class EvilConfig(Qwen2Config):\n    pass\n")
    config = json.loads((case.llm / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig"}
    (case.llm / "config.json").write_text(json.dumps(config))
    case.before = case.fingerprint()
    outcome = case.convert(case.tmp / "out", verify=True)
    assert not marker.exists(), "the base folder's remote code ran without being asked for"
    return outcome


def exported_file_permissions(case):
    out = case.tmp / "out"
    previous = os.umask(0o022)
    try:
        outcome = case.convert(out)
    finally:
        os.umask(previous)
    modes = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode)
             for p in [out, *out.rglob("*")]}
    expected = {name: 0o755 if (out / name).is_dir() else 0o644 for name in modes}
    assert modes == expected
    return outcome


EXPORT_ATTACKS = [
    # (attack, expected outcome)
    (out_is_work_dir, r"^error: OUT_DIR .* is the run's work dir"),
    (out_is_checkpoint, r"^error: OUT_DIR .* is CHECKPOINT"),
    (out_is_base_llm, r"^error: OUT_DIR .* is the base LLM"),
    (new_out_inside_work_dir, r"^ok$"),
    (new_out_inside_base_llm, r"^ok$"),
    (out_inside_deepspeed_checkpoint, r"^error: OUT_DIR .* lies inside a DeepSpeed checkpoint "
                                      r"directory"),
    (out_contains_inputs, r"^error: OUT_DIR .* contains CHECKPOINT"),
    (force_over_a_folder_that_is_no_export, r"^error: .*is not an export of this tool"),
    (force_over_a_previous_export, r"^ok$"),
    (rename_fails_while_replacing, r"^error: cannot move the new export .*previous export is "
                                   r"unchanged"),
    (bad_max_shard_size, r"^error: --max-shard-size: cannot read size"),
    (unknown_profile, r"^error: profile 'no-such-llm' .*is not registered; choose one of"),
    (parent_not_writable, r"^error: export to /proc/.* failed: .*OUT_DIR was not changed"),
    (disk_full_while_writing, r"^error: export to .* failed.*OUT_DIR was not changed"),
    (interrupted_by("SIGTERM"), r"^error: interrupted \(SIGTERM\)"),
    (interrupted_by("SIGHUP"), r"^error: interrupted \(SIGHUP\)"),
    (killed_then_run_again, r"^ok$"),
    (empty_checkpoint, r"^error: .*empty.pth: is empty \(0 bytes\)"),
    (random_bytes_checkpoint, r"^error: .*random.pth: is not a torch checkpoint"),
    (pickle_that_runs_a_command, r"^error: .*evil.pth: .*outside the safe allowlist "
                                 r"\(posix\.system\)"),
    (extra_layer, r"^error: .*same kind with other layers"),
    (one_lora_pair_missing, r"^error: .*no llm LoRA pair .* for 1 module.*layers\.1\.self_attn"
                            r"\.v_proj"),
    (no_llm_lora_at_all, r"^error: .*has no llm LoRA weights.*--pretrain-checkpoint"),
    (pretrain_checkpoint_said_so, r"^ok$"),
    (projector_of_another_shape, r"^error: .*projector\.model\.0\.weight has shape"),
    (lora_of_another_llm_same_shapes, r"^error: .*model\.llm is .*llama.*trained with the LLM "
                                      r".*qwen2 \(recorded in"),
    (hostile_auto_map_with_verify, r"^ok$"),
    (exported_file_permissions, r"^ok$"),
]


@requires_fixtures
@pytest.mark.parametrize("attack,expected", EXPORT_ATTACKS,
                         ids=[a.__name__ for a, _ in EXPORT_ATTACKS])
def test_export_attack(attack, expected, inprocess_run, tiny_parts, swap_options_fn,
                       monkeypatch, tmp_path):
    case = ExportCase(tmp_path, inprocess_run("qwen2.5", "qwen2"), tiny_parts, swap_options_fn)
    extra = {"monkeypatch": monkeypatch, "tiny_parts": tiny_parts,
             "swap_options": swap_options_fn}
    import inspect

    wanted = [p for p in inspect.signature(attack).parameters if p != "case"]
    outcome = attack(case, **{name: extra[name] for name in wanted})
    assert re.search(expected, outcome, flags=re.S), outcome
    assert "\n" not in outcome, "a refusal is one line"
    assert case.fingerprint() == case.before, "an input of the export changed"
    assert case.leftovers() == [], "a temporary folder was left behind"


# ================================================================================ data
GOOD_IMAGE = "good.png"


def _sample(image=GOOD_IMAGE, reply="A square.", question="What is it?"):
    turns = [{"from": "human", "value": f"<image>\n{question}" if image else question},
             {"from": "gpt", "value": reply}]
    return {"image": image, "conversations": turns} if image else {"conversations": turns}


class DataCase:
    """A jsonl (or json) with good samples around the attack at index 1, its images."""

    def __init__(self, tmp: Path, tiny_parts):
        from transformers import AutoTokenizer, CLIPImageProcessor

        self.tmp = tmp
        self.images = tmp / "images"
        self.images.mkdir()
        Image.new("RGB", (32, 24), (200, 30, 30)).save(self.images / GOOD_IMAGE)
        self.tokenizer = AutoTokenizer.from_pretrained(tiny_parts("qwen2"))
        self.processor = CLIPImageProcessor.from_pretrained(tiny_parts("clip"))

    def write(self, attack_line, suffix: str = ".jsonl", n_good: int = 2) -> Path:
        """``attack_line``: a sample dict, or the raw bytes of one jsonl line."""
        good = [json.dumps(_sample(question=f"Question {i}?")).encode() for i in range(n_good)]
        attack = attack_line if isinstance(attack_line, bytes) else json.dumps(attack_line).encode()
        path = self.tmp / f"data{suffix}"
        if suffix == ".jsonl":
            path.write_bytes(b"\n".join([good[0], attack, *good[1:]]) + b"\n")
        else:
            path.write_bytes(b"[" + b",".join([good[0], attack, *good[1:]]) + b"]")
        return path

    def dataset(self, data: Path, **kwargs):
        from data.data_helpers import qwen_chat_template_cfg

        from xtuner_llava_swap.data import LLaVASwapDataset

        return LLaVASwapDataset(str(self.images), self.processor, data_path=str(data),
                                tokenizer=self.tokenizer, dataset_map_fn="any_format_map_fn",
                                template_map_fn=qwen_chat_template_cfg(), max_length=400,
                                image_token_count=16, cache=False, **kwargs)

    def outcome(self, data: Path, **kwargs) -> str:
        """``kept N; skipped reason@index ...`` (every item loaded), or ``error: ...``."""
        from xtuner_llava_swap.data import DataError

        try:
            ds = self.dataset(data, **kwargs)
        except (DataError, ValueError) as err:
            return f"error: {err}"
        for index in range(len(ds)):  # no step may crash
            assert torch.isfinite(ds[index]["pixel_values"]).all()
        skipped = sorted(f"{reason}@{i}" for reason, kept in ds.problems.examples.items()
                         for i, _ in kept)
        return f"kept {len(ds)}; skipped {' '.join(skipped) or 'none'}"


SURROGATE_REPLY = ('{"image": "good.png", "conversations": [{"from": "human", "value": '
                   '"<image>\\nHi"}, {"from": "gpt", "value": "ok \\ud800"}]}').encode()


def lone_surrogate_jsonl(case):
    return case.outcome(case.write(SURROGATE_REPLY))


def lone_surrogate_json(case):
    return case.outcome(case.write(SURROGATE_REPLY, ".json"))


def lone_surrogate_strict(case):
    return case.outcome(case.write(SURROGATE_REPLY), strict=True)


def lone_surrogate_check_data(case):
    from data.data_helpers import qwen_chat_template_cfg

    from xtuner_llava_swap.data.report import check_data

    report = check_data(case.write(SURROGATE_REPLY), case.tokenizer, image_tokens=16,
                        image_folder=str(case.images), template_map_fn=qwen_chat_template_cfg(),
                        progress=False)
    return f"check_data: {dict(report.problems.counts)}"


def deeply_nested_line(case):
    return case.outcome(case.write(b'{"conversations": ' + b"[" * 200_000 + b"]" * 200_000
                                   + b"}"))


def one_non_utf8_byte(case):
    return case.outcome(case.write(json.dumps(_sample(reply="caf#")).encode()
                                   .replace(b"#", b"\xe9")))


def _image_row(make, name="attack.png", **dataset_kwargs):
    def attack(case):
        path = case.images / name
        make(path, case)
        return case.outcome(case.write(_sample(image=name)), **dataset_kwargs)
    attack.__name__ = make.__name__
    return attack


def tiny_1x1(path, case):
    Image.new("RGB", (1, 1), (0, 0, 0)).save(path)


def decompression_bomb(path, case):
    """A PNG whose header claims 20000x20000 pixels (PIL refuses it as a bomb)."""
    import zlib

    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    start = data.index(b"IHDR")
    data[start + 4:start + 12] = (20000).to_bytes(4, "big") * 2
    data[start + 17:start + 21] = zlib.crc32(bytes(data[start:start + 17])).to_bytes(4, "big")
    path.write_bytes(bytes(data))


def palette_with_transparency(path, case):
    image = Image.new("P", (32, 32), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.save(path, transparency=0)


def rgba(path, case):
    Image.new("RGBA", (32, 32), (10, 200, 10, 0)).save(path)


def cmyk(path, case):
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(path.with_suffix(".jpg"))
    path.with_suffix(".jpg").rename(path)


def animated(path, case):
    frames = [Image.new("P", (32, 32), i) for i in range(3)]
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:])


def grey_16_bit(case):
    """32896 = 128 * 257: the same picture as 8-bit grey 128, not white."""
    Image.fromarray(np.full((24, 32), 32896, dtype=np.uint16)).save(case.images / "g16.png")
    Image.new("L", (32, 24), 128).save(case.images / "g8.png")
    ds = case.dataset(case.write(_sample(image="g16.png")))
    reference = ds._pixels("g8.png")
    assert torch.equal(ds[1]["pixel_values"], reference)
    assert not torch.equal(reference, ds._pixels(GOOD_IMAGE))
    return case.outcome(case.write(_sample(image="g16.png")))


def path_with_dotdot(case):
    Image.new("RGB", (32, 32)).save(case.tmp / "outside.png")
    return case.outcome(case.write(_sample(image="../outside.png")))


def absolute_path(case):
    Image.new("RGB", (32, 32)).save(case.tmp / "outside.png")
    return case.outcome(case.write(_sample(image=str(case.tmp / "outside.png"))))


def dotdot_allowed_when_asked(case):
    Image.new("RGB", (32, 32)).save(case.tmp / "outside.png")
    return case.outcome(case.write(_sample(image="../outside.png")),
                        allow_outside_image_folder=True)


def symlink_inside_the_folder(case):
    """Image folders are often mounted through links: a link inside is followed."""
    Image.new("RGB", (32, 32)).save(case.tmp / "elsewhere.png")
    (case.images / "linked.png").symlink_to(case.tmp / "elsewhere.png")
    return case.outcome(case.write(_sample(image="linked.png")))


def strict_stops_at_the_first_bad_sample_in_file_order(case):
    """Sample 1 has a missing image, sample 2 an empty reply: sample 1 comes first."""
    data = case.tmp / "data.jsonl"
    data.write_text("\n".join(json.dumps(s) for s in [
        _sample(), _sample(image="missing.png"), _sample(reply=" "), _sample()]) + "\n")
    return case.outcome(data, strict=True)


def replacement_draws_random_samples(case):
    """Sample 1's image is cut after a valid header (it passes the preflight check)."""
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(image).save(case.images / "cut.png")
    whole = (case.images / "cut.png").read_bytes()
    (case.images / "cut.png").write_bytes(whole[: len(whole) // 3])
    data = case.tmp / "data.jsonl"
    samples = [_sample(question=f"Question {i}?") for i in range(8)]
    samples[1] = _sample(image="cut.png")
    data.write_text("\n".join(json.dumps(s) for s in samples) + "\n")

    def draws(ds):
        ids = [list(ds.prepared.encoded.sample(i)[0]) for i in range(len(ds))]
        return [ids.index(list(ds[1]["input_ids"])) for _ in range(40)]
    first, again = draws(case.dataset(data)), draws(case.dataset(data))
    assert first == again and 1 not in first  # seeded; never the failing sample
    ds = case.dataset(data, replacement_seed=1)
    draws(ds)
    assert sum(ds.load_failures.values()) == 40  # every replacement counted (and logged)
    return f"replaced by {len(set(first))} distinct samples"


DATA_ATTACKS = [
    (lone_surrogate_jsonl, r"^kept 2; skipped text_encoding@1$"),
    (lone_surrogate_json, r"^kept 2; skipped text_encoding@1$"),
    (lone_surrogate_strict, r"^error: .*data.jsonl: sample 1: text_encoding"),
    (lone_surrogate_check_data, r"^check_data: \{'text_encoding': 1\}$"),
    (deeply_nested_line, r"^kept 2; skipped invalid_json@1$"),
    (one_non_utf8_byte, r"^kept 2; skipped text_encoding@1$"),
    (_image_row(tiny_1x1), r"^kept 2; skipped image_too_small@1$"),
    (_image_row(decompression_bomb), r"^kept 2; skipped image_too_large@1$"),
    (_image_row(palette_with_transparency), r"^kept 3; skipped none$"),
    (_image_row(rgba), r"^kept 3; skipped none$"),
    (_image_row(cmyk), r"^kept 3; skipped none$"),
    (_image_row(animated), r"^kept 3; skipped none$"),
    (grey_16_bit, r"^kept 3; skipped none$"),
    (path_with_dotdot, r"^kept 2; skipped image_outside_folder@1$"),
    (absolute_path, r"^kept 2; skipped image_outside_folder@1$"),
    (dotdot_allowed_when_asked, r"^kept 3; skipped none$"),
    (symlink_inside_the_folder, r"^kept 3; skipped none$"),
    (strict_stops_at_the_first_bad_sample_in_file_order,
     r"^error: .*data.jsonl: sample 1: missing_image_file"),
    (replacement_draws_random_samples, r"^replaced by [3-7] distinct samples$"),
]


@pytest.mark.parametrize("attack,expected", DATA_ATTACKS,
                         ids=[a.__name__ for a, _ in DATA_ATTACKS])
def test_data_attack(attack, expected, tiny_parts, tmp_path):
    outcome = attack(DataCase(tmp_path, tiny_parts))
    assert re.search(expected, outcome), outcome
