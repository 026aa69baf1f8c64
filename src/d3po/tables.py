"""The evaluation table of an experiment and the results table of a whole run.

Inputs are the files of docs/design.md: score CSVs ``id, proxy, value`` (one per sample set and
proxy) and the sample sets they score. The evaluation table (evaluation.csv) is long, one row
per experiment x method x seed x checkpoint epoch x proxy: ``mean, std, n, ci_low, ci_high``
over images (std with ddof=0, defined for one image), ``round`` (the feedback round of a
checkpoint of an experiment with rounds, empty for online training; the base model is method
"base", epoch 0, round 0) and the paired comparison with the base model: every checkpoint is
sampled on the evaluation noise of the base model, so image i of both is a pair, and
``delta, delta_se, p_value, test`` are the mean paired difference, its standard error and the
paired test's p (d3po.stats). ``blank`` is the proxy's value on a blank image where the proxy
declares that no image content goes below it (a JPEG's header), else empty.

The results table puts every method's last checkpoint beside the base model, mean ± std over
seeds, the paired change with its standard error over seeds, the change of the content above
the blank image, the p of every seed, and the paper's numbers; a second table lists, per run,
the first checkpoint at which each other held-out rate fell significantly below the base model
(reward hacking shows there first).
"""

from __future__ import annotations

import csv
import functools
import html
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from d3po.atomic import write_atomically
from d3po.errors import ConfigError, InputFileError, MissingFileError
from d3po.provenance import provenance_line
from d3po.rewards import blank_image_value
from d3po.sample_sets import read_manifest
from d3po.stats import mean_interval, paired_comparison

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
    "delta",
    "delta_se",
    "p_value",
    "test",
    "blank",
]
# What every evaluation.csv has had; the later columns are optional when reading.
REQUIRED_EVALUATION_COLUMNS = EVALUATION_COLUMNS[:11]
RUN_KEYS = ("experiment", "method", "seed", "epoch", "samples_seen")
BASE = "base"
SIGNIFICANCE = 0.05


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def read_table(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """A CSV table with at least ``columns`` and one row; InputFileError naming the file (and
    the line) when it is empty, has a row with too few or too many fields (a file cut off while
    it was written), or lacks a column."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file")
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


def read_evaluations(evaluation_csvs: Sequence[Path] | Path) -> pd.DataFrame:
    """One or more evaluation.csv files as one table (columns added since filled with NaN)."""
    paths = [evaluation_csvs] if isinstance(evaluation_csvs, str | Path) else evaluation_csvs
    tables = [read_table(path, REQUIRED_EVALUATION_COLUMNS) for path in paths]
    return pd.concat(tables, ignore_index=True).reindex(columns=EVALUATION_COLUMNS)


# ---------------------------------------------------------------------------------------------
# Evaluation table
# ---------------------------------------------------------------------------------------------


def collect_evaluation(
    score_csvs: Sequence[Path],
    runs: Sequence[dict[str, Any]],
    out_csv: Path,
    proxy_options: dict[str, dict[str, Any]] | None = None,
) -> pd.DataFrame:
    """Summarise score CSVs into the long evaluation table, paired with the base model.

    ``runs[k]`` describes the sample set scored in ``score_csvs[k]``: a dict with keys
    experiment, method, seed, epoch, samples_seen, and optionally round (a feedback round) and
    samples (the sample set's folder: its manifest confirms that the images of a checkpoint and
    of the base model share their noise, and gives the image size for ``blank``).
    ``proxy_options`` ({proxy: options}, as the score jobs got them) score the blank image as
    the samples were scored (a JPEG proxy's quality).
    """
    if len(score_csvs) != len(runs):
        raise ConfigError(f"got {len(score_csvs)} score files but {len(runs)} run descriptions")
    scored = []
    for score_csv, run in zip(score_csvs, runs, strict=True):
        missing = [key for key in RUN_KEYS if key not in run]
        if missing:
            raise ConfigError(f"run description for {score_csv} lacks {missing}")
        scores = read_table(score_csv, ("id", "proxy", "value"))
        for proxy, values in scores.groupby("proxy", sort=True):
            scored.append((run, proxy, values.set_index("id")["value"].astype(float)))
    bases = {
        (run["experiment"], proxy): (run, values)
        for run, proxy, values in scored
        if run["method"] == BASE
    }
    # every sample set's manifest read (and its images' existence checked) once, not once per
    # proxy and again for each checkpoint compared with the base model
    manifests = functools.cache(lambda folder: read_manifest(Path(folder)))
    options = proxy_options or {}
    rows = [
        _evaluation_row(run, proxy, values, bases, manifests, options.get(proxy))
        for run, proxy, values in scored
    ]
    table = pd.DataFrame(rows, columns=EVALUATION_COLUMNS)
    write_atomically(table, Path(out_csv))
    return table


def _evaluation_row(
    run: dict,
    proxy: str,
    values: pd.Series,
    bases: dict,
    manifests: Callable,
    options: dict[str, Any] | None,
) -> dict[str, Any]:
    low, high = mean_interval(values.to_numpy())
    row = {key: run[key] for key in RUN_KEYS} | {"round": run.get("round"), "proxy": proxy}
    row |= {"mean": values.mean(), "std": values.std(ddof=0), "n": len(values)}
    row |= {"ci_low": low, "ci_high": high, "blank": _blank(proxy, run, manifests, options)}
    base = bases.get((run["experiment"], proxy))
    if (
        run["method"] != BASE
        and base is not None
        and _same_noise(run, base[0], values, base[1], manifests)
    ):
        comparison = paired_comparison(values.to_numpy(), base[1].loc[values.index].to_numpy())
        row |= {"delta": comparison.delta, "delta_se": comparison.se}
        row |= {"p_value": comparison.p_value, "test": comparison.test}
    return row


def _same_noise(
    run: dict, base_run: dict, values: pd.Series, base_values: pd.Series, manifests: Callable
) -> bool:
    """Image i of the two sets is a pair: the same ids and, where the manifests are known, the
    same noise seed for every id."""
    if set(values.index) != set(base_values.index):
        return False
    if "samples" not in run or "samples" not in base_run:
        return True
    seeds = [manifests(r["samples"]).set_index("id")["seed"] for r in (run, base_run)]
    return seeds[0].sort_index().equals(seeds[1].sort_index())


def _blank(proxy: str, run: dict, manifests: Callable, options: dict[str, Any] | None) -> float:
    if "samples" not in run:
        return np.nan
    first = manifests(run["samples"])["path"].iloc[0]
    value = blank_image_value(proxy, Path(run["samples"]) / first, options)
    return np.nan if value is None else value


# ---------------------------------------------------------------------------------------------
# Results table
# ---------------------------------------------------------------------------------------------


def _last_epoch(rows: pd.DataFrame) -> pd.DataFrame:
    """Keep, for every seed, only the rows of its last evaluated epoch."""
    last = rows.groupby("seed")["epoch"].transform("max")
    return rows[rows["epoch"] == last]


def _by_round(runs: pd.DataFrame) -> Iterator[tuple[str, str, bool, pd.DataFrame]]:
    """(method, label, is the last round, rows) per method, and per round for feedback rounds
    (label "d3po round 2")."""
    for method, method_runs in runs.groupby("method", sort=True):
        if method_runs["round"].isna().all():
            yield method, method, True, method_runs
        else:  # groupby drops the rows whose round is NaN
            rounds = method_runs.groupby("round", sort=True)
            for index, (number, rows) in enumerate(rounds, start=1):
                yield method, f"{method} round {int(number)}", index == rounds.ngroups, rows


def _end_row(ends: pd.DataFrame, start: pd.Series) -> dict[str, Any]:
    """One method's last checkpoints on one proxy (one row per seed) against the base model.

    Spread over seeds: std of the seeds' means; the paired change's standard error: over seeds
    (std / sqrt(seeds)) when there are several, the paired one over images for a single seed.
    """
    seeds = len(ends)
    deltas = ends["delta"].to_numpy(dtype=float)
    delta_se = np.std(deltas, ddof=1) / np.sqrt(seeds) if seeds > 1 else ends["delta_se"].iloc[0]
    content = start["mean"] - start["blank"]
    return {
        "start_mean": start["mean"],
        "start_std": start["std"],
        "start_seeds": int(start["seeds"]),
        "end_mean": ends["mean"].mean(),
        "end_std": ends["mean"].std(ddof=0),
        "seeds": seeds,
        "delta": float(np.mean(deltas)),
        "delta_se": float(delta_se),
        "content_change": float(np.mean(deltas) / content) if content else np.nan,
        "p_values": " ".join(f"{p:.2g}" for p in ends.sort_values("seed")["p_value"]),
    }


def _summary_rows(
    table: pd.DataFrame, objectives: dict[str, str], paper: dict[str, dict[str, float]]
) -> Iterator[dict[str, Any]]:
    for experiment, runs in table.groupby("experiment", sort=True):
        base = runs[runs["method"] == BASE].groupby("proxy")
        starts = base.agg(mean=("mean", "mean"), blank=("blank", "mean"), seeds=("mean", "size"))
        starts["std"] = base["mean"].std(ddof=0)
        objective = objectives.get(experiment, experiment)
        proxies = sorted(runs["proxy"].unique(), key=lambda proxy: (proxy != objective, proxy))
        reference = paper.get(experiment, {})
        for method, label, last_round, method_runs in _by_round(runs[runs["method"] != BASE]):
            ends = _last_epoch(method_runs)
            for proxy in proxies:
                proxy_ends = ends[ends["proxy"] == proxy]
                if proxy_ends.empty or proxy not in starts.index:
                    continue
                is_objective = proxy == objective
                row = {"experiment": experiment, "method": label, "proxy": proxy}
                row |= {"objective": is_objective} | _end_row(proxy_ends, starts.loc[proxy])
                # the paper's numbers on the objective row; its end beside the last round
                row["paper_start"] = reference.get(BASE, np.nan) if is_objective else np.nan
                shown_end = is_objective and last_round
                row["paper"] = reference.get(method, np.nan) if shown_end else np.nan
                yield row


def _format(mean: float, spread: float, seeds: int = 2) -> str:
    """``mean ± spread``; the mean alone for one seed's std (a spread of 0 would say nothing)."""
    if pd.isna(mean):
        return "-"
    return f"{mean:.3g} ± {spread:.2g}" if seeds > 1 and not pd.isna(spread) else f"{mean:.3g}"


def _percent(fraction: float) -> str:
    return "" if pd.isna(fraction) else f"{100 * fraction:+.0f} %"


def _paper(value: float) -> str:
    return "" if pd.isna(value) else f"{value:g}"


# Column -> how a summary row shows in it.
TABLE_COLUMNS = {
    "objective": lambda row: row.experiment,
    "method": lambda row: row.method,
    "proxy": lambda row: row.proxy,
    "start (base)": lambda row: _format(row.start_mean, row.start_std, row.start_seeds),
    "end": lambda row: _format(row.end_mean, row.end_std, row.seeds),
    "change, same noise": lambda row: _format(row.delta, row.delta_se),
    "content change": lambda row: _percent(row.content_change),
    "p per seed": lambda row: row.p_values,
    "seeds": lambda row: str(row.seeds),
    "paper start": lambda row: _paper(row.paper_start),
    "paper end": lambda row: _paper(row.paper),
}
TABLE_NOTE = (
    "Bold: the experiment's objective. start and end: mean ± std over seeds of the mean over "
    "held-out images (the mean alone for one seed; the base model is one sample set). change: "
    "the mean paired difference end - start over images that share their noise, ± its standard "
    "error (over seeds when there are several, over images for one). content change: the change "
    "relative to the base model's value above a blank image (JPEG: the bytes above the header). "
    "p per seed: McNemar's exact test for rates, the paired t-test otherwise."
)


def _cells(
    summary: pd.DataFrame, bold: str, escape: Callable[[str], str] = lambda cell: cell
) -> pd.DataFrame:
    """The shown table: TABLE_COLUMNS of every summary row, each cell passed through ``escape``
    (HTML escaping for the page), then the objective proxy wrapped in ``bold`` (a format string)."""
    shown = pd.DataFrame(
        [[escape(show(row)) for show in TABLE_COLUMNS.values()] for row in summary.itertuples()],
        columns=list(TABLE_COLUMNS),
    )
    objective = summary["objective"].to_numpy(dtype=bool)
    shown.loc[objective, "proxy"] = shown.loc[objective, "proxy"].map(bold.format)
    return shown


def side_effects(table: pd.DataFrame, objectives: dict[str, str]) -> pd.DataFrame:
    """Per experiment, method and seed: the first checkpoint epoch at which each held-out rate
    other than the objective fell below the base model's (paired p < 0.05); NaN if never."""
    rates = table[(table["method"] != BASE) & (table["test"] == "mcnemar")]
    rates = rates[rates["proxy"] != rates["experiment"].map(lambda e: objectives.get(e, e))]
    fell = rates[(rates["delta"] < 0) & (rates["p_value"] < SIGNIFICANCE)]
    run = ["experiment", "method", "seed"]
    first = fell.groupby([*run, "proxy"])["epoch"].min().unstack("proxy")
    last = rates.groupby(run)["epoch"].max().rename("last_epoch")
    # one row per run that exists (a pivot would list every experiment x method x seed)
    frame = last.to_frame().join(first)
    return frame.reindex(columns=["last_epoch", *sorted(rates["proxy"].unique())]).reset_index()


def _side_effects_markdown(effects: pd.DataFrame) -> str:
    if effects.empty:
        return ""
    proxies = effects.columns[4:]  # after experiment, method, seed and last_epoch
    shown = effects.rename(columns={"last_epoch": "epochs trained"})
    shown[proxies] = effects[proxies].map(lambda epoch: "-" if pd.isna(epoch) else f"{epoch:g}")
    return (
        "\nFirst checkpoint epoch at which a held-out rate fell below the base model "
        f"(McNemar p < {SIGNIFICANCE}, same noise); '-': not up to the last.\n\n"
        + shown.to_markdown(index=False)
        + "\n"
    )


def _html(summary: pd.DataFrame, provenance: str) -> str:
    """The same table as a small HTML page (the Snakemake report shows HTML files inline)."""
    shown = _cells(summary, "<b>{}</b>", lambda cell: html.escape(str(cell)))
    style = (
        "table{border-collapse:collapse;font-family:sans-serif;font-size:14px}"
        "th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}"
    )
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>results table</title>"
        f"<style>{style}</style></head><body>\n"
        + shown.to_html(index=False, escape=False, border=0)
        + f"\n<p>{html.escape(TABLE_NOTE)}</p>\n"
        + f"<p>Written with {html.escape(provenance)}.</p>\n</body></html>\n"
    )


def results_table(
    evaluation_csvs: Sequence[Path],
    out_csv: Path,
    out_md: Path,
    paper: dict[str, dict[str, float]] | None = None,
    objectives: dict[str, str] | None = None,
    out_html: Path | None = None,
) -> pd.DataFrame:
    """Start and end values per experiment x method x proxy, and the side-effects table.

    Long layout, one row per (experiment, method, proxy): ``start_*`` is the base model (method
    "base"), ``end_*`` each seed's last evaluated epoch; mean and std are over seeds of the
    per-seed image means; ``delta``, ``delta_se``, ``content_change`` and ``p_values`` as
    TABLE_NOTE says. The experiment's objective proxy (``objectives[experiment]``, by default
    the experiment's own name) comes first and is bold in the Markdown. ``paper``
    ({experiment: {method: value}}, with method "base" for the start) fills the "paper start"
    and "paper end" columns on the objective row (for feedback rounds, "paper end" on the last
    round's).
    """
    table = read_evaluations(evaluation_csvs)
    objectives = objectives or {}
    summary = pd.DataFrame(_summary_rows(table, objectives, paper or {}))
    if summary.empty:
        raise InputFileError("no trained runs (method other than 'base') in the evaluation tables")
    markdown = _cells(summary, "**{}**").to_markdown(index=False) + f"\n\n{TABLE_NOTE}\n"
    markdown += _side_effects_markdown(side_effects(table, objectives))
    provenance = provenance_line()  # one git call and version lookup for both files
    markdown += f"\nTables written with {provenance}.\n"
    write_atomically(summary, Path(out_csv))
    write_atomically(markdown, Path(out_md))
    if out_html is not None:
        write_atomically(_html(summary, provenance), Path(out_html))
    return summary
