"""Preflight report of a LLaVA data file: problems, lengths, what ``max_length`` drops,
a histogram PNG and an HTML view of samples (trained vs masked tokens, image place).

Used by ``tools/check_data.py``; :func:`check_data` does the work and returns a
:class:`DataReport` whose :meth:`~DataReport.text` is what the tool prints.
"""
from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .encode import IMAGE_TOKEN_INDEX, apply_length_policy
from .preprocess import build_tokenizer, drop_bad_images, prepare_text
from .validate import ProblemLog

PERCENTILES = (50, 90, 95, 99, 100)
NO_LIMIT = 1 << 40  # max_length that keeps everything, to see every sample's length


@dataclass
class DataReport:
    data_path: str
    n_raw: int
    n_valid: int
    problems: ProblemLog
    image_tokens: int
    max_length: int
    length_policy: str
    percentiles: dict[int, int]
    mean_positions: float
    policy_outcome: Counter  # reason -> samples the policy removes at max_length
    truncated: int
    images_per_sample: Counter = field(default_factory=Counter)  # image count -> valid samples
    png: Path | None = None
    html: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def n_train(self) -> int:
        return self.n_valid - sum(self.policy_outcome.values())

    def text(self) -> str:
        lines = [f"data: {self.data_path}",
                 f"samples: {self.n_raw} in the file, {self.n_valid} valid, {self.n_train} "
                 f"would train at max_length {self.max_length} (policy {self.length_policy!r})",
                 f"image tokens per image: {self.image_tokens}",
                 "images per sample (valid samples): " + ", ".join(
                     f"{n} image{'s' if n != 1 else ''}: {c}"
                     for n, c in sorted(self.images_per_sample.items())), "",
                 "problems (samples skipped):"]
        lines.append(self.problems.table(self.n_raw) if self.problems.total else "  none")
        lines += ["", "sequence length with the image tokens (valid samples): "
                  + ", ".join(f"p{p} {v}" for p, v in self.percentiles.items())
                  + f", mean {self.mean_positions:.1f}"]
        over = sum(self.policy_outcome.values())
        lines.append(f"max_length {self.max_length}: {over} sample(s) removed ("
                     + (", ".join(f"{r} {c}" for r, c in sorted(self.policy_outcome.items()))
                        or "none") + f"), {self.truncated} truncated")
        lines += self.notes
        if self.png:
            lines.append(f"histogram: {self.png}")
        if self.html:
            lines.append(f"samples view: {self.html}")
        return "\n".join(lines)


def check_data(data_path: str | Path, tokenizer: Any, *, image_tokens: int,
               image_folder: str | None = None, dataset_map_fn: Any = None,
               template_map_fn: Any = None, max_length: int = 2048, length_policy: str = "drop",
               max_images: int = 1, check_images: str = "open", out_dir: str | Path | None = None,
               html_samples: int = 20, progress: bool = True,
               allow_outside_image_folder: bool = False) -> DataReport:
    """Check every sample of ``data_path`` as the dataset would; write the PNG/HTML to
    ``out_dir`` when given."""
    tokenizer = build_tokenizer(tokenizer)
    prepared = prepare_text(data_path, tokenizer, image_tokens=image_tokens,
                            dataset_map_fn=dataset_map_fn, template_map_fn=template_map_fn,
                            max_length=NO_LIMIT, max_images=max_images, cache=False,
                            progress=progress)
    prepared = drop_bad_images(prepared, data_path, image_folder, check_images,
                               progress=progress,
                               allow_outside_image_folder=allow_outside_image_folder)
    positions = prepared.positions()
    fitted, kept, removed = apply_length_policy(prepared.encoded, image_tokens, max_length,
                                                length_policy if length_policy != "error" else "drop")
    outcome = Counter(error.reason for error in removed.values())
    truncated = int((fitted.lengths() < prepared.encoded.lengths()[kept]).sum())
    report = DataReport(
        str(data_path), prepared.n_raw, len(prepared), prepared.problems, image_tokens,
        max_length, length_policy,
        {p: int(np.percentile(positions, p)) if len(positions) else 0 for p in PERCENTILES},
        float(positions.mean()) if len(positions) else 0.0, outcome, truncated,
        Counter(len(files) for files in prepared.images))
    if length_policy == "error" and outcome:
        report.notes.append(f"policy 'error' would stop the run at the first of these "
                            f"{sum(outcome.values())} sample(s)")
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        report.png = write_histogram(positions, max_length, out / "lengths.png",
                                     title=Path(data_path).name)
        report.html = write_samples_html(prepared, tokenizer, out / "samples.html",
                                         html_samples, max_length)
    return report


def write_histogram(positions: np.ndarray, max_length: int, path: Path, title: str = "") -> Path:
    """PNG histogram of sequence lengths with a line at ``max_length``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 3.6), dpi=100)
    top = max(int(positions.max()) if len(positions) else 0, max_length) * 1.05
    axes.hist(positions, bins=np.linspace(0, top, 60), color="#4c78a8")
    over = int((positions > max_length).sum())
    axes.axvline(max_length, color="#d62728", linewidth=2,
                 label=f"max_length {max_length} ({over} over)")
    axes.set_xlabel("tokens per sample, image tokens included")
    axes.set_ylabel("samples")
    axes.set_title(f"{title}: {len(positions)} samples")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


_STYLE = """body{font-family:sans-serif;max-width:60em;margin:auto}
.s{border:1px solid #ccc;margin:1em 0;padding:.5em}
pre{white-space:pre-wrap;word-break:break-word;font-size:13px;line-height:1.5}
.t{background:#c7f0c2}.m{color:#555;background:#eee}
.img{background:#ffd47a;font-weight:bold;padding:0 .3em;border-radius:3px}"""


def write_samples_html(prepared, tokenizer, path: Path, n: int, max_length: int) -> Path:
    """HTML of the first ``n`` valid samples: green = trained, grey = masked, the image
    shown where its tokens go."""
    positions = prepared.positions()
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(path.stem)}</title>"
             f"<style>{_STYLE}</style><h1>{len(prepared)} valid samples, first "
             f"{min(n, len(prepared))} shown</h1>"
             "<p><span class='t'>trained</span> <span class='m'>masked (-100)</span> "
             f"<span class='img'>image: {prepared.image_tokens} tokens</span></p>"]
    for position in range(min(n, len(prepared))):
        begin, end = prepared.encoded.offsets[position], prepared.encoded.offsets[position + 1]
        ids = np.asarray(prepared.encoded.ids[begin:end])
        trained = np.asarray(prepared.encoded.trained[begin:end])
        images = iter(prepared.images[position])
        flag = "over max_length" if positions[position] > max_length else ""
        parts.append(f"<div class='s'><b>sample {int(prepared.source_index[position])}</b>: "
                     f"{int(positions[position])} tokens {flag}<pre>")
        for kind, run in _runs(ids, trained):
            if kind == "image":
                parts.append(f"<span class='img'>[image {html.escape(next(images, '?'))}]</span>")
            else:
                text = html.escape(tokenizer.decode(run.tolist()))
                parts.append(f"<span class='{kind}'>{text}</span>")
        parts.append("</pre></div>")
    path.write_text("".join(parts), encoding="utf-8")
    return path


def _runs(ids: np.ndarray, trained: np.ndarray):
    """Consecutive runs of ('t' | 'm' | 'image', ids)."""
    kinds = np.where(ids == IMAGE_TOKEN_INDEX, 2, trained.astype(np.int64))
    names = {0: "m", 1: "t", 2: "image"}
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or kinds[i] != kinds[start] or kinds[i] == 2:
            yield names[int(kinds[start])], ids[start:i]
            start = i


def dataset_args_from_config(config: str | Path, cfg_options: dict | None = None) -> tuple[dict, list[str]]:
    """The :func:`check_data` arguments of a training config's ``train_dataloader.dataset``
    (this project's ``LLaVASwapDataset`` or xtuner's ``LLaVADataset``), and notes."""
    from mmengine.config import Config

    from .image_tokens import resolve_image_token_count
    from .preprocess import _qualified_name

    cfg = Config.fromfile(str(config))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    dataset = cfg.train_dataloader.dataset
    image_tokens = resolve_image_token_count(
        dataset.get("image_token_count"), dataset.get("vision_config"),
        dataset.get("image_processor"), dataset.get("select_feature", "patch"))
    notes = []
    max_length = dataset.get("max_length", 2048)
    if not _qualified_name(dataset.get("type")).endswith("LLaVASwapDataset"):
        notes.append(f"the config uses {_qualified_name(dataset.get('type'))}: its max_length "
                     f"{max_length} counts an image as 1 token, so a sample reaches "
                     f"{max_length - 1 + image_tokens} positions with its image; xtuner cuts "
                     "longer samples blindly (the image token or every trained token can go)")
        max_length = max_length - 1 + image_tokens
    return dict(data_path=dataset["data_path"], tokenizer=dataset["tokenizer"],
                image_folder=dataset.get("image_folder"),
                dataset_map_fn=dataset.get("dataset_map_fn"),
                template_map_fn=dataset.get("template_map_fn"), max_length=max_length,
                length_policy=dataset.get("length_policy", "drop"),
                allow_outside_image_folder=bool(dataset.get("allow_outside_image_folder")),
                image_tokens=image_tokens), notes
