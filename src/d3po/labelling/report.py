"""Who judged how much, how well annotators agree, and what a record yields for training.

Agreement is measured on *units* judged by several people: the best image of a prompt
(``best``), the winner of a pair (``pairwise`` and the original pair lines; "tie" is a value of
its own), the score of an image (``score``). Two numbers: raw pairwise agreement (the share of
pairs of annotators who gave a shared unit the same value) and Krippendorff's alpha (the
``krippendorff`` package: nominal for choices, ordinal for scores), which corrects for chance.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from d3po.preferences import decide_pairs, live_judgements


def _units(live: pd.DataFrame) -> dict[str, dict[str, dict[tuple, Any]]]:
    """{"choice"|"score": {annotator: {unit: value}}} from the live decisions."""
    units: dict[str, dict[str, dict[tuple, Any]]] = {"choice": {}, "score": {}}
    for row in live.itertuples():
        choices = units["choice"].setdefault(row.annotator, {})
        if row.kind == "best":
            choices[("best", *sorted(row.images))] = row.best
        elif row.kind == "pair":
            a, b = sorted((row.a, row.b))
            choices[("pair", a, b)] = {"a": row.a, "b": row.b}.get(row.winner, "tie")
        elif row.kind == "score":
            for image, value in row.scores.items():
                units["score"].setdefault(row.annotator, {})[("score", image)] = float(value)
    return units


def _agreement(by_annotator: dict[str, dict[tuple, Any]], level: str) -> dict[str, Any]:
    """Raw agreement per pair of annotators and overall, and Krippendorff's alpha."""
    annotators = sorted(who for who, units in by_annotator.items() if units)
    pairs, agreeing, shared_total = [], 0, 0
    for first, second in itertools.combinations(annotators, 2):
        shared = set(by_annotator[first]) & set(by_annotator[second])
        agree = sum(by_annotator[first][unit] == by_annotator[second][unit] for unit in shared)
        if shared:
            pairs.append({"annotators": [first, second], "shared": len(shared),
                          "agreement": agree / len(shared)})  # fmt: skip
        agreeing, shared_total = agreeing + agree, shared_total + len(shared)
    counts = Counter(unit for who in annotators for unit in by_annotator[who])
    several = sorted(unit for unit, count in counts.items() if count >= 2)
    return {
        "units_judged_by_several": len(several),
        "pairwise_agreement": agreeing / shared_total if shared_total else None,
        "krippendorff_alpha": _alpha(by_annotator, annotators, several, level),
        "level": level,
        "pairs_of_annotators": pairs,
    }


def _alpha(by_annotator, annotators, units, level) -> float | None:
    """Krippendorff's alpha over ``units`` (annotators x units, missing values as NaN)."""
    import krippendorff

    if not units:
        return None
    values = pd.Series([by_annotator[who].get(unit) for who in annotators for unit in units])
    if values.nunique() < 2:
        return 1.0  # one value for everything: alpha is undefined, the agreement full
    if level == "nominal":  # choices (image ids, "tie") as numbers; missing ones stay NaN
        values = pd.Series(pd.factorize(values, sort=True)[0]).replace(-1, np.nan)
    data = values.to_numpy(dtype=float).reshape(len(annotators), len(units))
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement=level))


def label_report(manifest: pd.DataFrame, judgements: pd.DataFrame) -> dict[str, Any]:
    """Per-annotator counts and time per prompt, agreement, and the pairs for training."""
    live = live_judgements(judgements)
    annotators = []
    for who, rows in judgements.groupby("annotator", sort=True):
        alive = live[live["annotator"] == who]
        decided = alive[alive["kind"] != "skip"]
        seconds = pd.to_numeric(decided["seconds"], errors="coerce").dropna()
        annotators.append({
            "annotator": who,
            "decisions": len(decided),
            "skips": int((alive["kind"] == "skip").sum()),
            "undos": int((rows["kind"] == "undo").sum()),
            "median_seconds_per_prompt": float(seconds.median()) if len(seconds) else None,
        })  # fmt: skip
    units = _units(live)
    agreement = {}
    if any(units["choice"].values()):
        agreement["choice"] = _agreement(units["choice"], "nominal")
    if any(units["score"].values()):
        agreement["score"] = _agreement(units["score"], "ordinal")
    decided = decide_pairs(judgements, [str(i) for i in manifest["id"]])
    return {
        "annotators": annotators,
        "agreement": agreement,
        "training": {
            "pairs": len(decided.pairs),
            "conflicting_decided_by_majority": decided.conflicting,
            "dropped": dict(decided.dropped),
        },
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as text for the terminal."""
    lines = ["annotator            decisions  skips  undos  median s/prompt"]
    for row in report["annotators"]:
        median = row["median_seconds_per_prompt"]
        shown = f"{median:.1f}" if median is not None else "-"
        lines.append(f"{row['annotator'][:20]:20} {row['decisions']:9d} {row['skips']:6d} "
                     f"{row['undos']:6d} {shown:>16}")  # fmt: skip
    for name, block in report["agreement"].items():
        raw, alpha = block["pairwise_agreement"], block["krippendorff_alpha"]
        lines.append(
            f"agreement ({name}, {block['units_judged_by_several']} units judged by several): "
            f"raw {_number(raw)}, Krippendorff's alpha ({block['level']}) {_number(alpha)}"
        )
        for pair in block["pairs_of_annotators"]:
            lines.append(f"    {' / '.join(pair['annotators'])}: {pair['agreement']:.3f} "
                         f"on {pair['shared']} shared")  # fmt: skip
    training = report["training"]
    dropped = ", ".join(f"{n} {why}" for why, n in sorted(training["dropped"].items())) or "none"
    lines.append(f"training pairs: {training['pairs']} (dropped: {dropped}; "
                 f"{training['conflicting_decided_by_majority']} decided by majority)")  # fmt: skip
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
