"""Tables and figures from workflow outputs: evaluation table, learning curves, sample grids.

Inputs are the files of docs/design.md: score CSVs ``id, proxy, value`` (one per sample set and
proxy), sample directories with ``manifest.csv``, training ``metrics.csv``. The evaluation table
is long: ``experiment, method, seed, epoch, samples_seen, proxy, mean, std, n, ci_low, ci_high,
round`` with method "base" (epoch 0, round 0) for the untrained model; ``round`` is the
feedback round (1, 2, ...) of a checkpoint of an experiment with rounds, whose epochs and
samples seen count on across rounds, and empty for online training. Standard deviations are
population std (ddof=0), so they are defined for a single image or a single seed.

References: the curves mirror Figure 3 of Yang et al., "Using Human Feedback to Fine-tune
Diffusion Models without Any Reward Model" (D3PO, CVPR 2024, arXiv 2311.13231): held-out proxy
value against the number of samples seen in training.
"""

from __future__ import annotations

import csv
import html
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from d3po.errors import ConfigError, InputFileError  # noqa: E402
from d3po.rewards import proxy_unit  # noqa: E402
from d3po.sample_sets import read_manifest  # noqa: E402
from d3po.stats import mean_interval  # noqa: E402

EVALUATION_COLUMNS = [
    "experiment",
    "method",
    "seed",
    "epoch",
    "samples_seen",
    "proxy",
    "mean",
    "std",
    "n",
    "ci_low",
    "ci_high",
    "round",
]
RUN_KEYS = ("experiment", "method", "seed", "epoch", "samples_seen")
METRICS_COLUMNS = ("samples_seen", "reward_mean")
BASE = "base"


def _write_atomically(text_or_frame: str | pd.DataFrame, out_path: Path) -> None:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = out_path.with_name(f".{out_path.name}.tmp{os.getpid()}")
    if isinstance(text_or_frame, pd.DataFrame):
        text_or_frame.to_csv(tmp_path, index=False)
    else:
        tmp_path.write_text(text_or_frame, encoding="utf-8")
    os.replace(tmp_path, out_path)


# ---------------------------------------------------------------------------------------------
# Evaluation table
# ---------------------------------------------------------------------------------------------


def collect_evaluation(
    score_csvs: Sequence[Path], runs: Sequence[dict[str, Any]], out_csv: Path
) -> pd.DataFrame:
    """Summarise score CSVs into the long evaluation table (mean, std, n over images).

    ``runs[k]`` describes the sample set scored in ``score_csvs[k]``: a dict with keys
    experiment, method, seed, epoch, samples_seen, and round for a feedback round.
    """
    if len(score_csvs) != len(runs):
        raise ConfigError(f"got {len(score_csvs)} score files but {len(runs)} run descriptions")
    rows = []
    for score_csv, run in zip(score_csvs, runs, strict=True):
        missing = [key for key in RUN_KEYS if key not in run]
        if missing:
            raise ConfigError(f"run description for {score_csv} lacks {missing}")
        scores = read_table(score_csv, ("id", "proxy", "value"))
        for proxy, values in scores.groupby("proxy", sort=True)["value"]:
            low, high = mean_interval(values.to_numpy())
            summary = {"proxy": proxy, "mean": values.mean(), "std": values.std(ddof=0)}
            interval = {"n": len(values), "ci_low": low, "ci_high": high}
            rounds = {"round": run.get("round")}
            rows.append({**{key: run[key] for key in RUN_KEYS}, **summary, **interval, **rounds})
    table = pd.DataFrame(rows, columns=EVALUATION_COLUMNS)
    _write_atomically(table, Path(out_csv))
    return table


def read_table(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """A CSV table with at least ``columns`` and one row; InputFileError naming the file (and
    the line) when it is empty, has a row with too few or too many fields (a file cut off while
    it was written), or lacks a column."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise InputFileError(f"{path}: empty file (no header, no rows)")
    header = rows[0]
    missing = [column for column in columns if column not in header]
    if missing:
        raise InputFileError(f"{path}: missing column(s) {missing}; the header is {header}")
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise InputFileError(
                f"{path} line {line}: {len(row)} fields where the header has {len(header)} "
                "(a truncated file?)"
            )
    if len(rows) == 1:
        raise InputFileError(f"{path}: no rows under the header")
    return pd.read_csv(path)


def _read_evaluations(evaluation_csvs: Sequence[Path] | Path) -> pd.DataFrame:
    paths = [evaluation_csvs] if isinstance(evaluation_csvs, str | Path) else evaluation_csvs
    tables = [read_table(path, EVALUATION_COLUMNS[:-1]) for path in paths]  # all but round
    table = pd.concat(tables, ignore_index=True)
    if "round" not in table.columns:  # written before rounds existed: all online
        table["round"] = np.nan
    return table


# ---------------------------------------------------------------------------------------------
# Learning curves
# ---------------------------------------------------------------------------------------------


def _curve_label(experiment: str, method: str, several_experiments: bool) -> str:
    return f"{experiment}: {method}" if several_experiments else method


def _axis_label(name: str, unit: str, what: str) -> str:
    return f"{name} ({unit}), {what}" if unit else f"{name}, {what}"


def _plot_proxy_panel(axis: plt.Axes, table: pd.DataFrame, proxy: str) -> None:
    """Mean over seeds vs samples seen with a 95 % band; the base model as a dashed line.

    The band is the 95 % interval over images of evaluation.csv (``ci_low``, ``ci_high``); with
    several seeds it runs from the lowest to the highest of the seeds' intervals.
    """
    rows = table[table["proxy"] == proxy]
    several = rows["experiment"].nunique() > 1
    for (experiment, method), curve in rows.groupby(["experiment", "method"], sort=True):
        label = _curve_label(experiment, method, several)
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
    axis.set_title(f"held-out {proxy}")
    axis.set_xlabel("training samples seen (images)")
    axis.set_ylabel(_axis_label(proxy, proxy_unit(proxy), "mean over images"))
    axis.legend(fontsize="small")
    axis.grid(alpha=0.3)


def _mark_rounds(axis: plt.Axes, curve: pd.DataFrame, color: str) -> None:
    """A dotted line and a label where each feedback round after the first begins."""
    numbered = curve[curve["round"] > 0]  # online runs have none, the base model is round 0
    ends = numbered.groupby("round")["samples_seen"].max()
    for number in ends.index[1:]:
        start = ends[number - 1] if number - 1 in ends.index else 0
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
    axis.set_title("training batches")
    axis.set_xlabel("training samples seen (images)")
    axis.set_ylabel(_axis_label("reward", unit, "mean over the epoch's images"))
    axis.legend(fontsize="small")
    axis.grid(alpha=0.3)


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
    table = _read_evaluations(evaluation_csv)
    metrics = _training_rewards(metrics_csvs)
    proxies = sorted(table["proxy"].unique())
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
    figure = curves_figure(evaluation_csv, metrics_csvs, objective)
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=120)
    plt.close(figure)


# ---------------------------------------------------------------------------------------------
# Sample grid
# ---------------------------------------------------------------------------------------------


def _first_image_per_prompt(samples_dir: Path) -> dict[str, Path]:
    first = read_manifest(samples_dir).drop_duplicates("prompt", keep="first")
    return {
        prompt: Path(samples_dir) / path
        for prompt, path in zip(first["prompt"], first["path"], strict=True)
    }


def _upscaled(path: Path, min_size: int = 128) -> np.ndarray:
    """Load an image; enlarge small ones by an integer factor with nearest-neighbour pixels."""
    image = Image.open(path).convert("RGB")
    factor = max(1, -(-min_size // min(image.size)))  # ceil division
    if factor > 1:
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
            axis.set_xticks([])
            axis.set_yticks([])
            if prompt in images:
                axis.imshow(_upscaled(images[prompt]), interpolation="nearest")
            else:
                axis.text(0.5, 0.5, "missing", ha="center", va="center")
            if row == 0:
                axis.set_title(label)
            if col == 0:
                axis.set_ylabel(textwrap.fill(prompt, 24), fontsize="small")
    figure.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=120)
    plt.close(figure)


# ---------------------------------------------------------------------------------------------
# Results table
# ---------------------------------------------------------------------------------------------


def _over_seeds(rows: pd.DataFrame) -> pd.DataFrame:
    """Per proxy: mean and std over seeds of the per-seed image means, and the seed count."""
    stats = rows.groupby("proxy")["mean"].agg(["mean", lambda x: x.std(ddof=0), "count"])
    stats.columns = ["mean", "std", "seeds"]
    return stats


def _last_epoch(rows: pd.DataFrame) -> pd.DataFrame:
    """Keep, for every seed, only the rows of its last evaluated epoch."""
    last = rows.groupby("seed")["epoch"].transform("max")
    return rows[rows["epoch"] == last]


def _by_round(runs: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(label, rows) per method, and per round for feedback rounds ("d3po round 2")."""
    groups = []
    for method, method_runs in runs.groupby("method", sort=True):
        rounds = method_runs["round"].dropna()
        if rounds.empty:
            groups.append((method, method_runs))
            continue
        for number in sorted(rounds.unique()):
            groups.append(
                (f"{method} round {int(number)}", method_runs[method_runs["round"] == number])
            )
    return groups


def _summary_rows(table: pd.DataFrame, objectives: dict[str, str]) -> list[dict[str, Any]]:
    rows = []
    for experiment, runs in table.groupby("experiment", sort=True):
        start = _over_seeds(runs[runs["method"] == BASE])
        objective = objectives.get(experiment, experiment)
        proxies = sorted(runs["proxy"].unique(), key=lambda proxy: (proxy != objective, proxy))
        for method, method_runs in _by_round(runs[runs["method"] != BASE]):
            end = _over_seeds(_last_epoch(method_runs))
            for proxy in proxies:
                rows.append(
                    {
                        "experiment": experiment,
                        "method": method,
                        "proxy": proxy,
                        "objective": proxy == objective,
                        "start_mean": start["mean"].get(proxy, np.nan),
                        "start_std": start["std"].get(proxy, np.nan),
                        "start_seeds": int(start["seeds"].get(proxy, 0)),
                        "end_mean": end["mean"].get(proxy, np.nan),
                        "end_std": end["std"].get(proxy, np.nan),
                        "seeds": int(end["seeds"].get(proxy, 0)),
                    }
                )
    return rows


def _format(mean: float, std: float, seeds: int) -> str:
    """``mean ± std`` over seeds; the mean alone for one seed (a spread of 0 would say nothing)."""
    if np.isnan(mean):
        return "-"
    return f"{mean:.3g} ± {std:.2g}" if seeds > 1 else f"{mean:.3g}"


TABLE_HEADER = (
    "objective",
    "method",
    "proxy",
    "start (base)",
    "end",
    "seeds",
    "paper start",
    "paper end",
)


def _table_cells(summary: pd.DataFrame) -> list[tuple[bool, list[str]]]:
    """Per row of the summary: (is the objective proxy, the cells under TABLE_HEADER)."""
    rows = []
    for row in summary.itertuples(index=False):
        paper_start = "" if pd.isna(row.paper_start) else f"{row.paper_start:g}"
        paper = "" if pd.isna(row.paper) else f"{row.paper:g}"
        cells = [
            row.experiment,
            row.method,
            row.proxy,
            _format(row.start_mean, row.start_std, row.start_seeds),
            _format(row.end_mean, row.end_std, row.seeds),
            str(row.seeds),
            paper_start,
            paper,
        ]
        rows.append((bool(row.objective), cells))
    return rows


def _markdown(summary: pd.DataFrame) -> str:
    """A GitHub Markdown table (written by hand: no tabulate dependency); objective in bold."""
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    for objective, cells in _table_cells(summary):
        cells[2] = f"**{cells[2]}**" if objective else cells[2]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _html(summary: pd.DataFrame) -> str:
    """The same table as a small HTML page (the Snakemake report shows HTML files inline)."""
    header = "".join(f"<th>{html.escape(name)}</th>" for name in TABLE_HEADER)
    body = []
    for objective, cells in _table_cells(summary):
        cells = [html.escape(cell) for cell in cells]
        cells[2] = f"<b>{cells[2]}</b>" if objective else cells[2]
        body.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    style = (
        "table{border-collapse:collapse;font-family:sans-serif;font-size:14px}"
        "th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}"
    )
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>results table</title>"
        f"<style>{style}</style></head><body>\n<table>\n<tr>{header}</tr>\n"
        + "\n".join(body)
        + "\n</table>\n<p>Bold: the experiment's objective. Mean ± std over seeds (the mean "
        "alone for one seed); the base model is one sample set.</p>\n</body></html>\n"
    )


def results_table(
    evaluation_csvs: Sequence[Path],
    out_csv: Path,
    out_md: Path,
    paper: dict[str, dict[str, float]] | None = None,
    objectives: dict[str, str] | None = None,
    out_html: Path | None = None,
) -> pd.DataFrame:
    """Start and end values per experiment x method x proxy, mean ± std over seeds.

    Long layout, one row per (experiment, method, proxy): ``start_*`` is the base model (method
    "base"), ``end_*`` each seed's last evaluated epoch; mean and std are over seeds of the
    per-seed image means. The experiment's objective proxy (``objectives[experiment]``, by
    default the experiment's own name) comes first and is bold in the Markdown. ``paper``
    ({experiment: {method: value}}, with method "base" for the start) fills the "paper start"
    and "paper" columns on the objective row.
    """
    table = _read_evaluations(evaluation_csvs)
    summary = pd.DataFrame(_summary_rows(table, objectives or {}))
    if summary.empty:
        raise InputFileError("no trained runs (method other than 'base') in the evaluation tables")
    paper = paper or {}

    def paper_value(row, method: str) -> float:
        return paper.get(row.experiment, {}).get(method, np.nan) if row.objective else np.nan

    rows = list(summary.itertuples(index=False))
    summary["paper_start"] = [paper_value(row, BASE) for row in rows]
    summary["paper"] = [paper_value(row, row.method) for row in rows]
    _write_atomically(summary, Path(out_csv))
    _write_atomically(_markdown(summary), Path(out_md))
    if out_html is not None:
        _write_atomically(_html(summary), Path(out_html))
    return summary
