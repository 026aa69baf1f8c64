"""Preferences: pairs (winner, loser) from proxy scores or from human judgement files.

D3PO trains on pairs of images sampled for the same prompt from the same initial noise. With
proxy objectives only the order matters: image i is preferred to image j when its scores
Pareto-dominate j's (>= on every objective, > on at least one); equal and incomparable pairs
are skipped. All K(K-1)/2 pairs of a group of K images are considered.

Human judgements are JSON Lines, one judgement per line (see docs/design.md):
``{"prompt": str, "a": id, "b": id, "winner": "a"|"b"|"tie", "annotator": str, "time": iso8601}``.
Several annotators may judge the same pair; the majority decides.

Reference: Yang et al., "Using Human Feedback to Fine-tune Diffusion Models without Any Reward
Model" (D3PO, CVPR 2024, arXiv 2311.13231), section 4 (preference data).
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

JUDGEMENT_FIELDS = ("prompt", "a", "b", "winner", "annotator", "time")
WINNERS = ("a", "b", "tie")


# ---------------------------------------------------------------------------------------------
# From scores
# ---------------------------------------------------------------------------------------------


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    """Pareto dominance of score vector ``a`` (P,) over ``b`` (P,): >= everywhere, > somewhere."""
    a, b = np.atleast_1d(np.asarray(a)), np.atleast_1d(np.asarray(b))
    return bool(np.all(a >= b) and np.any(a > b))


def preference_pairs(groups: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """All within-group pairs where one image Pareto-dominates the other.

    groups: (B,) int group ids (images sharing one initial noise); scores: (B,) or (B, P).
    Returns (N, 2) int64 rows (winner index, loser index), ordered by group (first appearance),
    then by (i, j) with i < j. Ties and incomparable pairs are skipped.
    """
    groups = np.asarray(groups)
    scores = np.asarray(scores, dtype=np.float64).reshape(len(groups), -1)  # (B, P)
    pairs: list[tuple[int, int]] = []
    for group in pd.unique(groups):
        members = np.flatnonzero(groups == group)
        for position, i in enumerate(members):
            for j in members[position + 1 :]:
                if dominates(scores[i], scores[j]):
                    pairs.append((int(i), int(j)))
                elif dominates(scores[j], scores[i]):
                    pairs.append((int(j), int(i)))
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


# ---------------------------------------------------------------------------------------------
# Human judgement files (JSON Lines)
# ---------------------------------------------------------------------------------------------


def _check_string(record: dict[str, Any], field: str, where: str) -> None:
    value = record[field]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: field {field!r} must be a non-empty string, got {value!r}")


def validate_judgement(
    record: Any, where: str = "judgement", known_ids: set[str] | None = None
) -> None:
    """Raise ValueError naming ``where`` and the field if ``record`` is not a valid judgement."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [field for field in JUDGEMENT_FIELDS if field not in record]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(map(repr, missing))}")
    for field in ("prompt", "a", "b", "annotator", "time"):
        _check_string(record, field, where)
    if record["winner"] not in WINNERS:
        raise ValueError(
            f"{where}: field 'winner' must be one of {', '.join(WINNERS)}, got {record['winner']!r}"
        )
    if record["a"] == record["b"]:
        raise ValueError(f"{where}: fields 'a' and 'b' name the same image {record['a']!r}")
    for field in ("a", "b"):
        if known_ids is not None and record[field] not in known_ids:
            raise ValueError(f"{where}: field {field!r} names unknown image id {record[field]!r}")
    try:
        datetime.fromisoformat(record["time"].replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{where}: field 'time' must be an ISO 8601 timestamp, got {record['time']!r}"
        ) from None


def read_judgements(path: Path, known_ids: set[str] | None = None) -> pd.DataFrame:
    """Read and validate a JSON Lines judgement file; blank lines are allowed.

    Returns one row per judgement with columns prompt, a, b, winner, annotator, time, line.
    Errors name the file, the line number and the field.
    """
    path = Path(path)
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path.name} line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: invalid JSON ({error.msg})") from None
            validate_judgement(record, where, known_ids)
            records.append({**{field: record[field] for field in JUDGEMENT_FIELDS}, "line": number})
    return pd.DataFrame(records, columns=[*JUDGEMENT_FIELDS, "line"])


def judgements_to_pairs(judgements: pd.DataFrame, ids: list[str]) -> np.ndarray:
    """(N, 2) (winner index, loser index) pairs into ``ids``, one per judged pair of images.

    Votes on the same unordered pair are pooled across annotators; the majority wins, "tie"
    votes count for neither side, and pairs with equal votes are skipped. Rows follow the order
    in which each pair first appears in the file.
    """
    index = {sample_id: position for position, sample_id in enumerate(ids)}
    votes: dict[tuple[str, str], Counter[str]] = {}
    for a, b, winner in zip(judgements["a"], judgements["b"], judgements["winner"], strict=True):
        if a not in index or b not in index:
            missing = a if a not in index else b
            raise ValueError(f"judged image id {missing!r} is not among the samples")
        counter = votes.setdefault((min(a, b), max(a, b)), Counter())
        if winner != "tie":
            counter[a if winner == "a" else b] += 1
    pairs = []
    for (first, second), counter in votes.items():
        if counter[first] > counter[second]:
            pairs.append((index[first], index[second]))
        elif counter[second] > counter[first]:
            pairs.append((index[second], index[first]))
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def append_judgement(path: Path, judgement: dict[str, Any]) -> None:
    """Validate ``judgement`` and append it as one line to ``path`` (never rewrites the file)."""
    path = Path(path)
    validate_judgement(judgement, where=f"{path.name} (new judgement)")
    line = json.dumps({field: judgement[field] for field in JUDGEMENT_FIELDS}, ensure_ascii=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A file whose last line lacks its newline would otherwise fuse with the new line.
    needs_newline = path.is_file() and path.stat().st_size > 0 and _last_byte(path) != b"\n"
    with path.open("a", encoding="utf-8") as handle:
        handle.write(("\n" if needs_newline else "") + line + "\n")


def _last_byte(path: Path) -> bytes:
    with path.open("rb") as handle:
        handle.seek(-1, 2)
        return handle.read(1)
