"""Tests for d3po.preferences: Pareto pairs from scores, judgement files, majority vote."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from d3po import preferences


def test_dominates_cases() -> None:
    assert preferences.dominates(np.array([2.0, 1.0]), np.array([1.0, 1.0]))
    assert not preferences.dominates(np.array([1.0, 1.0]), np.array([1.0, 1.0]))  # tie
    assert not preferences.dominates(np.array([2.0, 0.0]), np.array([1.0, 1.0]))  # incomparable
    assert not preferences.dominates(np.array([1.0, 1.0]), np.array([2.0, 1.0]))
    assert preferences.dominates(np.array([3.0]), np.array([-1.0]))


def test_four_distinct_scores_give_all_six_pairs_ordered_by_score() -> None:
    scores = np.array([0.3, 0.9, 0.1, 0.5])
    pairs = preferences.preference_pairs(np.zeros(4, dtype=int), scores)
    assert pairs.shape == (6, 2) and pairs.dtype == np.int64
    expected = [
        (i, j) if scores[i] > scores[j] else (j, i) for i, j in itertools.combinations(range(4), 2)
    ]
    assert [tuple(row) for row in pairs] == expected


def test_ties_and_incomparable_pairs_are_skipped() -> None:
    groups = np.array([0, 0, 0])
    scores = np.array([[1.0, 1.0], [1.0, 1.0], [2.0, 0.0]])  # 0 = 1 (tie); 2 incomparable to both
    assert preferences.preference_pairs(groups, scores).shape == (0, 2)
    scores = np.array([[1.0, 1.0], [1.0, 2.0], [0.0, 0.0]])
    pairs = preferences.preference_pairs(groups, scores)
    assert [tuple(row) for row in pairs] == [(1, 0), (0, 2), (1, 2)]


def test_groups_are_never_mixed() -> None:
    groups = np.array([0, 1, 0, 1, 2])
    scores = np.array([5.0, 1.0, 3.0, 2.0, 9.0])
    pairs = preferences.preference_pairs(groups, scores)
    assert [tuple(row) for row in pairs] == [(0, 2), (3, 1)]
    assert all(groups[winner] == groups[loser] for winner, loser in pairs)


def _judgement(a: str, b: str, winner: str, annotator: str = "ann") -> dict[str, str]:
    return {
        "prompt": "cat",
        "a": a,
        "b": b,
        "winner": winner,
        "annotator": annotator,
        "time": "2026-11-01T12:00:00+00:00",
    }


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_an_undo_line_with_a_prompt_is_read_against_the_manifest(tmp_path: Path) -> None:
    """An undo names no image; a 'prompt' field on it is extra, as any unknown field."""
    manifest = pd.DataFrame(
        {
            "id": ["x", "y"],
            "prompt": ["cat"] * 2,
            "group": [0, 0],
            "seed": [1, 1],
            "path": ["."] * 2,
        }
    )
    first = {**_judgement("x", "y", "a"), "decision": "d1"}
    undo = {"kind": "undo", "undoes": "d1", "prompt": "cat", "annotator": "ann"}
    path = _write_lines(
        tmp_path / "labels.jsonl", [json.dumps(first), json.dumps(undo | {"time": first["time"]})]
    )
    table = preferences.read_judgements(path, manifest=preferences.index_manifest(manifest))
    assert list(table["kind"]) == ["pair", "undo"]


def test_read_judgements_allows_blank_lines(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "labels.jsonl",
        [json.dumps(_judgement("x", "y", "a")), "", "  ", json.dumps(_judgement("y", "z", "tie"))],
    )
    table = preferences.read_judgements(path, known_ids={"x", "y", "z"})
    assert list(table["winner"]) == ["a", "tie"]
    assert list(table["line"]) == [1, 4]


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        (
            json.dumps(_judgement("x", "y", "c")),
            "line 2: field 'winner' must be one of a, b, tie, got 'c'",
        ),
        ('{"prompt": "cat", ', "line 2: invalid JSON"),
        (
            json.dumps({k: v for k, v in _judgement("x", "y", "a").items() if k != "b"}),
            "line 2: missing field.*'b'",
        ),
        (json.dumps({**_judgement("x", "y", "a"), "time": "yesterday"}), "line 2: field 'time'"),
        (json.dumps(_judgement("x", "unknown", "a")), "line 2: field 'b' names unknown image id"),
    ],
)
def test_read_judgements_errors_name_file_line_and_field(
    tmp_path: Path, bad_line: str, message: str
) -> None:
    path = _write_lines(
        tmp_path / "labels.jsonl", [json.dumps(_judgement("x", "y", "a")), bad_line]
    )
    with pytest.raises(ValueError, match=f"labels.jsonl {message}"):
        preferences.read_judgements(path, known_ids={"x", "y"})


def test_majority_vote_and_ties(tmp_path: Path) -> None:
    ids = ["x", "y", "z", "w"]
    lines = [
        _judgement("x", "y", "b", "ann1"),  # y > x
        _judgement("y", "x", "a", "ann2"),  # y > x (same pair, swapped order)
        _judgement("x", "y", "a", "ann3"),  # x > y: outvoted 2:1
        _judgement("z", "w", "a", "ann1"),  # z > w
        _judgement("w", "z", "a", "ann2"),  # w > z: 1:1, skipped
        _judgement("x", "z", "tie", "ann1"),  # tie only: skipped
        _judgement("x", "w", "tie", "ann1"),
        _judgement("x", "w", "b", "ann2"),  # w > x: 1 vote beats 0
    ]
    path = _write_lines(tmp_path / "labels.jsonl", [json.dumps(line) for line in lines])
    pairs = preferences.judgements_to_pairs(preferences.read_judgements(path), ids)
    assert [tuple(row) for row in pairs] == [(1, 0), (3, 0)]


def test_append_judgements_appends_and_validates(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    path.write_text(json.dumps(_judgement("x", "y", "a")))  # last line without newline
    preferences.append_judgements(path, [_judgement("y", "z", "b")])
    preferences.append_judgements(path, [_judgement("x", "z", "tie")])
    table = preferences.read_judgements(path)
    assert list(table["winner"]) == ["a", "b", "tie"]
    before = path.read_text()
    with pytest.raises(ValueError, match="field 'winner'"):
        preferences.append_judgements(path, [_judgement("x", "z", "left")])
    assert path.read_text() == before
