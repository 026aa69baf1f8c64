"""Figures from workflow outputs: learning curves and sample grids.

Inputs are the files of docs/design.md: the evaluation table (d3po.tables), sample directories
with ``manifest.csv``, training ``metrics.csv``.

References: the curves mirror Figure 3 of Yang et al., "Using Human Feedback to Fine-tune
Diffusion Models without Any Reward Model" (D3PO, CVPR 2024, arXiv 2311.13231): held-out proxy
value against the number of samples seen in training.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from d3po.errors import ConfigError  # noqa: E402
from d3po.rewards import proxy_unit  # noqa: E402
from d3po.sample_sets import read_manifest  # noqa: E402
from d3po.tables import BASE, read_evaluations, read_table  # noqa: E402

METRICS_COLUMNS = ("samples_seen", "reward_mean")


# ---------------------------------------------------------------------------------------------
# Learning curves
# ---------------------------------------------------------------------------------------------


def _finish_panel(axis: plt.Axes, title: str, quantity: str, unit: str, what: str) -> None:
    """Title, legend and grid of a panel; x: samples seen, y: ``quantity (unit), what``."""
    ylabel = f"{quantity} ({unit}), {what}" if unit else f"{quantity}, {what}"
    axis.set(title=title, xlabel="training samples seen (images)", ylabel=ylabel)
    axis.legend(fontsize="small")
    axis.grid(alpha=0.3)


def _plot_proxy_panel(axis: plt.Axes, table: pd.DataFrame, proxy: str) -> None:
    """Mean over seeds vs samples seen with a 95 % band; the base model as a dashed line.

    The band is the 95 % interval over images of evaluation.csv (``ci_low``, ``ci_high``); with
    several seeds it runs from the lowest to the highest of the seeds' intervals.
    """
    rows = table[table["proxy"] == proxy]
    several = rows["experiment"].nunique() > 1
    for (experiment, method), curve in rows.groupby(["experiment", "method"], sort=True):
        label = f"{experiment}: {method}" if several else method
        if method == BASE:
            axis.axhline(curve["mean"].mean(), color="gray", linestyle="--", label=label)
            axis.axhspan(curve["ci_low"].min(), curve["ci_high"].max(), color="gray", alpha=0.1)
            continue
        # every run starts from the base model: its value is the curve's point at 0 samples
        start = rows[(rows["experiment"] == experiment) & (rows["method"] == BASE)]
        curve = pd.concat([start.assign(samples_seen=0), curve])
        per_step = curve.groupby("samples_seen").agg(
            mean=("mean", "mean"), low=("ci_low", "min"), high=("ci_high", "max")
        )
        (line,) = axis.plot(per_step.index, per_step["mean"], marker="o", markersize=3, label=label)
        axis.fill_between(
            per_step.index, per_step["low"], per_step["high"], color=line.get_color(), alpha=0.2
        )
        _mark_rounds(axis, curve, line.get_color())
    _finish_panel(axis, f"held-out {proxy}", proxy, proxy_unit(proxy), "mean over images")


def _mark_rounds(axis: plt.Axes, curve: pd.DataFrame, color: str) -> None:
    """A dotted line and a label where each feedback round after the first begins."""
    numbered = curve[curve["round"] > 0]  # online runs have none, the base model is round 0
    ends = numbered.groupby("round")["samples_seen"].max()
    for number in ends.index[1:]:
        start = ends.get(number - 1, 0)
        axis.axvline(start, color=color, linestyle=":", alpha=0.6)
        axis.annotate(
            f"round {int(number)}",
            (start, 1),
            xycoords=("data", "axes fraction"),
            fontsize="x-small",
            va="top",
        )


def _training_rewards(metrics_csvs: dict[str, Path] | None) -> dict[str, pd.DataFrame]:
    """The metrics tables that hold a training reward (a judged run has none: it learns from
    fixed judgements, not from scores), read and checked."""
    tables = {
        label: read_table(path, METRICS_COLUMNS) for label, path in (metrics_csvs or {}).items()
    }
    return {label: table for label, table in tables.items() if table["reward_mean"].notna().any()}


def _plot_metrics_panel(axis: plt.Axes, metrics: dict[str, pd.DataFrame], unit: str) -> None:
    for label, table in metrics.items():
        axis.plot(table["samples_seen"], table["reward_mean"], label=label)
    _finish_panel(axis, "training batches", "reward", unit, "mean over the epoch's images")


def curves_figure(
    evaluation_csv: Path | Sequence[Path],
    metrics_csvs: dict[str, Path] | None = None,
    objective: str | None = None,
) -> plt.Figure:
    """One panel per proxy: held-out mean vs samples seen, one line per method.

    Lines are the mean over seeds with the 95 % band of evaluation.csv; the base model is a
    dashed horizontal line. With ``metrics_csvs`` (label -> metrics.csv) an extra panel shows
    the training-batch reward of each run that has one (in the unit of ``objective``, the
    proxy the runs were trained on). The title names the experiment(s).
    """
    table = read_evaluations(evaluation_csv)
    if objective is not None and objective not in set(table["proxy"]):
        scored = ", ".join(sorted(table["proxy"].unique()))
        raise ConfigError(f"objective '{objective}' is not among the table's proxies: {scored}")
    metrics = _training_rewards(metrics_csvs)
    # the trained proxy first, what it may cost (alignment, the unsafe rate, ...) beside it
    proxies = sorted(table["proxy"].unique(), key=lambda proxy: (proxy != objective, proxy))
    panels = len(proxies) + (1 if metrics else 0)
    columns = min(panels, 3)
    rows = -(-panels // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.6 * rows), squeeze=False)
    axes = axes.flatten()
    for axis, proxy in zip(axes, proxies, strict=False):
        _plot_proxy_panel(axis, table, proxy)
    if metrics:
        _plot_metrics_panel(axes[len(proxies)], metrics, proxy_unit(objective) if objective else "")
    for axis in axes[panels:]:
        axis.set_visible(False)
    experiments = ", ".join(sorted(table["experiment"].unique()))
    figure.suptitle(f"experiment {experiments}: held-out proxies, 95 % intervals shaded")
    figure.tight_layout()
    return figure


def plot_curves(
    evaluation_csv: Path | Sequence[Path],
    out_png: Path,
    metrics_csvs: dict[str, Path] | None = None,
    objective: str | None = None,
) -> None:
    """Write :func:`curves_figure` to ``out_png``."""
    _save(curves_figure(evaluation_csv, metrics_csvs, objective), out_png)


def _save(figure: plt.Figure, out_png: Path) -> None:
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=120)
    plt.close(figure)


# ---------------------------------------------------------------------------------------------
# Sample grid
# ---------------------------------------------------------------------------------------------


def _first_image_per_prompt(samples_dir: Path) -> dict[str, Path]:
    first = read_manifest(samples_dir).drop_duplicates("prompt").set_index("prompt")["path"]
    return {prompt: Path(samples_dir) / path for prompt, path in first.items()}


def _upscaled(path: Path, min_size: int = 128) -> np.ndarray:
    """Load an image; enlarge small ones by an integer factor with nearest-neighbour pixels."""
    image = Image.open(path).convert("RGB")
    factor = -(-min_size // min(image.size))  # ceil division: 1 leaves the image as it is
    image = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
    return np.asarray(image)


def sample_grid(
    before_dir: Path, after_dirs: dict[str, Path], out_png: Path, max_prompts: int = 6
) -> None:
    """Rows = prompts (first ``max_prompts`` of the base set), columns = base then each method.

    Each cell shows the first image generated for that prompt in that sample set.
    """
    columns = {BASE: _first_image_per_prompt(before_dir)}
    columns.update({label: _first_image_per_prompt(path) for label, path in after_dirs.items()})
    prompts = list(columns[BASE])[:max_prompts]
    figure, axes = plt.subplots(
        len(prompts), len(columns), figsize=(2.2 * len(columns), 2.2 * len(prompts)), squeeze=False
    )
    for row, prompt in enumerate(prompts):
        for col, (label, images) in enumerate(columns.items()):
            axis = axes[row][col]
            axis.set(xticks=[], yticks=[])
            if prompt in images:
                axis.imshow(_upscaled(images[prompt]), interpolation="nearest")
            else:
                axis.text(0.5, 0.5, "missing", ha="center", va="center")
            if row == 0:
                axis.set_title(label)
            if col == 0:
                axis.set_ylabel(textwrap.fill(prompt, 24), fontsize="small")
    figure.tight_layout()
    _save(figure, out_png)
