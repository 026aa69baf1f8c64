"""Score tables (``id, proxy, value``), checked when read.

A score table is written by `d3po score` for a registered proxy, or by a user's own Snakemake
rule for a rule-based proxy (README "Add a proxy"). Whoever wrote it, the evaluation and the
proxy-scored rounds read it through :func:`read_scores`, which refuses a table that does not
score every image of its sample set exactly once with finite values under the expected proxy
name, naming the file and the first bad row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from d3po.errors import InputFileError, MissingFileError

SCORE_COLUMNS = ("id", "proxy", "value")


class ScoreFileError(InputFileError):
    """A score table that cannot be used; the message names the file and the first bad row."""


def read_scores(path: Path, proxy: str, ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Read ``path`` and check it: columns, proxy name, finite values, each id exactly once.

    With ``ids`` (the sample set's manifest ids) every image must be scored and no other one.
    Returns the table (id as str, value as float) in the file's order. Rows are counted as in
    the file: line 1 is the header, so the first data row is line 2.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"score table not found: {path}")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise ScoreFileError(f"{path}: not a CSV table ({error})") from None
    missing = [column for column in SCORE_COLUMNS if column not in table.columns]
    if missing:
        raise ScoreFileError(
            f"{path}: missing column(s) {missing}; a score table has columns id,proxy,value"
        )
    known = None if ids is None else {str(i) for i in ids}
    seen: set[str] = set()
    values = []
    for line, (sample_id, name, value) in enumerate(
        zip(table["id"], table["proxy"], table["value"], strict=True), start=2
    ):
        where = f"{path} line {line}"
        if name != proxy:
            raise ScoreFileError(f"{where}: proxy is {name!r}, expected {proxy!r}")
        if known is not None and sample_id not in known:
            raise ScoreFileError(f"{where}: id {sample_id!r} is not an image of the sample set")
        if sample_id in seen:
            raise ScoreFileError(f"{where}: id {sample_id!r} is scored twice")
        seen.add(sample_id)
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise ScoreFileError(f"{where}: value {value!r} is not a finite number")
        values.append(number)
    if known is not None and seen != known:
        unscored = [str(i) for i in ids if str(i) not in seen]
        raise ScoreFileError(
            f"{path}: {len(unscored)} image(s) of the sample set are not scored, "
            f"the first is {unscored[0]!r}"
        )
    return pd.DataFrame({"id": list(table["id"]), "proxy": proxy, "value": values})


def check_run_scores(run: dict[str, Any]) -> None:
    """Check the score tables of one evaluated sample set (a `d3po collect` run description).

    ``run["scores"]`` are the workflow's ``.../NAME.csv`` tables (the file name is the proxy)
    and ``run["samples"]``, when given, the sample set they score.
    """
    paths = run.get("scores") if isinstance(run, dict) else None
    if not paths or not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise InputFileError(f"a run description has a list of paths 'scores', got {run!r}")
    if not isinstance(run.get("samples", ""), str):
        raise InputFileError(f"a run description's 'samples' is a folder, got {run['samples']!r}")
    ids = None
    if run.get("samples"):
        from d3po.sample_sets import read_manifest

        ids = list(read_manifest(Path(run["samples"]))["id"].astype(str))
    for path in run["scores"]:
        read_scores(Path(path), Path(path).stem, ids)
