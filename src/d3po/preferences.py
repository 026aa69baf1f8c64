"""Preferences: pairs (winner, loser) from proxy scores or from human judgement files.

D3PO trains on pairs of images sampled for the same prompt from the same initial noise. With
proxy objectives only the order matters: image i is preferred to image j when its scores
Pareto-dominate j's (>= on every objective, > on at least one); equal and incomparable pairs
are skipped. All K(K-1)/2 pairs of a group of K images are considered.

Human judgements are an append-only JSON Lines record (docs/design.md, "Files between steps"):
one line per decision of one annotator. A line's ``kind`` says what was decided:

- ``pair`` (the default; ``kind`` may be left out): ``prompt, a, b, winner`` (``a|b|tie``);
- ``best``: ``prompt, images, best``: the best of the images shown (best > each other one);
- ``score``: ``prompt, scores`` (image id -> number): each image rated, e.g. good 1 / bad 0;
- ``skip``: ``prompt, images``: the annotator passed on these images;
- ``undo``: ``undoes``: cancels the earlier decision of that id (same annotator).

Every line has ``annotator`` and ``time``; the labelling app adds ``decision`` (an id), ``protocol``
and ``seconds`` (time on the prompt). Turning a record into training pairs: undone decisions
are dropped, scores are averaged per image across annotators and ordered within the images
scored together (equal means skipped), and every vote on an unordered pair is pooled: the
majority decides, tie votes count for neither side, equal votes are skipped. What is dropped
and why is counted (``decide_pairs``).

Reference: Yang et al., "Using Human Feedback to Fine-tune Diffusion Models without Any Reward
Model" (D3PO, CVPR 2024, arXiv 2311.13231), section 4 (preference data).
"""

from __future__ import annotations

import codecs
import fcntl
import itertools
import json
import logging
import math
import os
import threading
from collections import Counter, defaultdict
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from d3po.errors import InputFileError, MissingFileError

WINNERS = ("a", "b", "tie")
PROTOCOLS = ("best", "score", "pairwise")
#: Fields each kind of line needs besides ``annotator`` and ``time``.
KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "pair": ("prompt", "a", "b", "winner"),
    "best": ("prompt", "images", "best"),
    "score": ("prompt", "scores"),
    "skip": ("prompt", "images"),
    "undo": ("undoes",),
}
#: Columns of the table ``read_judgements`` returns (absent fields are None).
RECORD_COLUMNS = (
    "kind", "decision", "protocol", "prompt", "a", "b", "winner", "images", "best", "scores",
    "undoes", "annotator", "time", "seconds", "line",
)  # fmt: skip

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# From scores
# ---------------------------------------------------------------------------------------------


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    """Pareto dominance of score vector ``a`` (P,) over ``b`` (P,): >= everywhere, > somewhere."""
    a, b = np.atleast_1d(a, b)
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
        for i, j in itertools.combinations(np.flatnonzero(groups == group), 2):
            if dominates(scores[i], scores[j]):
                pairs.append((int(i), int(j)))
            elif dominates(scores[j], scores[i]):
                pairs.append((int(j), int(i)))
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


# ---------------------------------------------------------------------------------------------
# Human judgement records (JSON Lines)
# ---------------------------------------------------------------------------------------------


def _check_string(record: dict[str, Any], field: str, where: str) -> None:
    value = record[field]
    if not isinstance(value, str) or not value:
        raise InputFileError(f"{where}: field {field!r} must be a non-empty string, got {value!r}")


def _check_known(image_id: str, field: str, where: str, known_ids: set[str] | None) -> None:
    if known_ids is not None and image_id not in known_ids:
        raise InputFileError(f"{where}: field {field!r} names unknown image id {image_id!r}")


def _check_images(record: dict[str, Any], where: str, known_ids: set[str] | None) -> None:
    images = record["images"]
    if (
        not isinstance(images, list)
        or len(images) < 2
        or not all(isinstance(image, str) and image for image in images)
    ):
        raise InputFileError(f"{where}: field 'images' must list at least two image ids")
    if len(set(images)) != len(images):
        raise InputFileError(f"{where}: field 'images' names an image twice")
    for image in images:
        _check_known(image, "images", where, known_ids)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    """A number a float holds: not a boolean, not inf or NaN, not an integer beyond 1e308."""
    try:
        return _is_number(value) and math.isfinite(value)
    except OverflowError:
        return False


def _check_scores(record: dict[str, Any], where: str, known_ids: set[str] | None) -> None:
    scores = record["scores"]
    if not isinstance(scores, dict) or not scores:
        raise InputFileError(f"{where}: field 'scores' must map image ids to numbers")
    for image, value in scores.items():
        if not _is_finite_number(value):
            raise InputFileError(
                f"{where}: field 'scores' gives image {image!r} a non-number {value!r}"
            )
        _check_known(image, "scores", where, known_ids)


def _check_kind_fields(record: dict[str, Any], kind: str, where: str, known: set[str] | None):
    if "prompt" in KIND_FIELDS[kind]:
        _check_string(record, "prompt", where)
    if kind == "pair":
        for name in ("a", "b"):
            _check_string(record, name, where)
        if record["winner"] not in WINNERS:
            raise InputFileError(
                f"{where}: field 'winner' must be one of {', '.join(WINNERS)}, "
                f"got {record['winner']!r}"
            )
        if record["a"] == record["b"]:
            raise InputFileError(f"{where}: fields 'a' and 'b' name the same image {record['a']!r}")
        for name in ("a", "b"):
            _check_known(record[name], name, where, known)
    elif kind in ("best", "skip"):
        _check_images(record, where, known)
        if kind == "best" and record["best"] not in record["images"]:
            raise InputFileError(
                f"{where}: field 'best' must be one of 'images', got {record['best']!r}"
            )
    elif kind == "score":
        _check_scores(record, where, known)
    else:  # undo
        _check_string(record, "undoes", where)


def validate_judgement(
    record: Any, where: str = "judgement", known_ids: set[str] | None = None
) -> None:
    """Raise ValueError naming ``where`` and the field if ``record`` is not a valid record line."""
    if not isinstance(record, dict):
        raise InputFileError(f"{where}: expected a JSON object, got {type(record).__name__}")
    kind = record.get("kind", "pair")
    if not isinstance(kind, str) or kind not in KIND_FIELDS:
        raise InputFileError(
            f"{where}: field 'kind' must be one of {', '.join(KIND_FIELDS)}, got {kind!r}"
        )
    missing = [name for name in (*KIND_FIELDS[kind], "annotator", "time") if name not in record]
    if missing:
        raise InputFileError(f"{where}: missing field(s) {', '.join(map(repr, missing))}")
    _check_kind_fields(record, kind, where, known_ids)
    _check_string(record, "annotator", where)
    _check_string(record, "time", where)
    for name in ("decision", "protocol"):
        if name in record:
            _check_string(record, name, where)
    if record.get("protocol", PROTOCOLS[0]) not in PROTOCOLS:
        raise InputFileError(f"{where}: field 'protocol' must be one of {', '.join(PROTOCOLS)}")
    seconds = record.get("seconds", 0)
    if not _is_number(seconds) or not seconds >= 0:
        raise InputFileError(f"{where}: field 'seconds' must be a number >= 0, got {seconds!r}")
    try:
        datetime.fromisoformat(record["time"].replace("Z", "+00:00"))
    except ValueError:
        raise InputFileError(
            f"{where}: field 'time' must be an ISO 8601 timestamp, got {record['time']!r}"
        ) from None


def timestamp(timespec: str = "seconds") -> str:
    """The current UTC time as a record line's ``time`` (ISO 8601)."""
    return datetime.now(timezone.utc).isoformat(timespec=timespec)


def judged_images(row: Any) -> list[str]:
    """The image ids one record line (a dict or a table row) is about, in their order."""
    get = row.get if isinstance(row, dict) else lambda name: getattr(row, name)
    kind = get("kind") or "pair"
    if kind == "pair":
        return [get("a"), get("b")]
    if kind == "score":
        return list(get("scores"))
    return list(get("images") or [])


def index_manifest(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest indexed by image id (str), as ``check_against_manifest`` wants it."""
    return manifest.assign(id=manifest["id"].astype(str)).set_index("id", drop=False)


def check_against_manifest(record: dict[str, Any], where: str, manifest: pd.DataFrame) -> None:
    """The images of one line belong to one group (initial noise) and its prompt is theirs.

    ``manifest`` is indexed by id (``index_manifest``) and holds every id of the line.
    """
    images = judged_images(record)
    if not images:
        return
    rows = manifest.loc[images]
    if rows["group"].nunique() > 1:
        raise InputFileError(
            f"{where}: images {', '.join(images)} come from different groups (initial noises) "
            f"{sorted(set(rows['group'].tolist()))}; only images of one group are compared"
        )
    if record["prompt"] != rows["prompt"].iloc[0]:
        raise InputFileError(
            f"{where}: field 'prompt' is {record['prompt']!r} but image {images[0]!r} was "
            f"sampled for {rows['prompt'].iloc[0]!r}"
        )


def _parse_lines(path: Path) -> list[tuple[int, Any]]:
    """(line number, parsed JSON) of every non-blank line; a UTF-8 BOM is accepted.

    A last line cut short (no newline, not JSON or cut inside a character), as a crash in
    mid-write can leave, is ignored with a warning: no decision on it was ever confirmed.
    Lines are decoded one by one, so that a bad byte is an error naming its line.
    """
    lines = path.read_bytes().removeprefix(codecs.BOM_UTF8).split(b"\n")
    parsed = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            parsed.append((number, json.loads(line.decode("utf-8"))))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            if number == len(lines):  # no newline after it: a cut-off last line
                logger.warning("%s line %d: ignoring a cut-off last line", path.name, number)
                continue
            reason = error.msg if isinstance(error, json.JSONDecodeError) else "not UTF-8"
            raise InputFileError(f"{path.name} line {number}: invalid JSON ({reason})") from None
    return parsed


def _check_history(records: list[dict[str, Any]], path: Path) -> None:
    """Decision ids are unique; an undo cancels an earlier decision of its annotator, once."""
    owners: dict[str, str] = {}
    undone: set[str] = set()
    for record in records:
        where = f"{path.name} line {record['line']}"
        if record["kind"] == "undo":
            target = record["undoes"]
            if owners.get(target) != record["annotator"]:
                raise InputFileError(
                    f"{where}: undoes {target!r}, which is no earlier decision of "
                    f"{record['annotator']!r}"
                )
            if target in undone:
                raise InputFileError(f"{where}: decision {target!r} is already undone")
            undone.add(target)
        elif record["decision"] is not None:
            if record["decision"] in owners:
                raise InputFileError(f"{where}: decision id {record['decision']!r} is used twice")
            owners[record["decision"]] = record["annotator"]


def read_judgements(
    path: Path, known_ids: set[str] | None = None, manifest: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Read and validate a JSON Lines judgement record; blank lines and a BOM are allowed.

    Returns one row per line with the columns ``RECORD_COLUMNS`` (fields a kind lacks are
    None; ``kind`` is "pair" for the original lines). With ``manifest`` (a sample set's
    manifest) the ids must be its ids, the images of one line one group, the prompt theirs.
    Errors name the file, the line number and the field.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"judgements file not found: {path}")
    if manifest is not None:
        manifest = index_manifest(manifest)
        known_ids = set(manifest.index) if known_ids is None else known_ids & set(manifest.index)
    records = []
    for number, record in _parse_lines(path):
        where = f"{path.name} line {number}"
        validate_judgement(record, where, known_ids)
        if manifest is not None and "prompt" in record:
            check_against_manifest(record, where, manifest)
        row = {column: record.get(column) for column in RECORD_COLUMNS}
        records.append({**row, "kind": record.get("kind", "pair"), "line": number})
    _check_history(records, path)
    return pd.DataFrame(records, columns=list(RECORD_COLUMNS))


def live_judgements(judgements: pd.DataFrame) -> pd.DataFrame:
    """The decisions that still count: undo lines and the decisions they cancel removed."""
    undone = judgements.loc[judgements["kind"] == "undo", "undoes"]  # non-empty strings
    return judgements[~judgements["decision"].isin(undone) & (judgements["kind"] != "undo")]


@dataclass
class DecidedPairs:
    """Training pairs from a record, with what was left out and why (counts)."""

    pairs: np.ndarray  # (N, 2) int64: winner index, loser index
    dropped: Counter[str] = field(default_factory=Counter)
    conflicting: int = 0  # pairs with votes on both sides, decided by the majority

    def summary(self) -> str:
        parts = [f"{len(self.pairs)} pairs"]
        if self.conflicting:
            parts.append(f"{self.conflicting} decided by majority over conflicting votes")
        parts += [f"{count} dropped: {reason}" for reason, count in sorted(self.dropped.items())]
        return "; ".join(parts)


#: Votes per unordered pair of images, in order of first appearance: image id or "tie" -> count.
_Votes = defaultdict[tuple[str, str], Counter[str]]


def _vote(votes: _Votes, a: str, b: str, winner: str) -> None:
    votes[min(a, b), max(a, b)][{"a": a, "b": b}.get(winner, "tie")] += 1


def _score_votes(live: pd.DataFrame, votes: _Votes, dropped: Counter[str]) -> None:
    """Mean score per image across annotators; pairs from their order within images scored
    together (one prompt's set); equal means are skipped."""
    scored = live[live["kind"] == "score"]
    values: defaultdict[str, list[float]] = defaultdict(list)
    sets: dict[tuple[str, ...], None] = {}  # an ordered set: first appearance
    for scores in scored["scores"]:
        sets[tuple(sorted(scores))] = None
        for image, value in scores.items():
            values[image].append(float(value))
    means = {image: float(np.mean(v)) for image, v in values.items()}
    for images in sets:
        for a, b in itertools.combinations(images, 2):
            if means[a] == means[b]:
                dropped["equal mean scores"] += 1
            else:
                _vote(votes, a, b, "a" if means[a] > means[b] else "b")


def decide_pairs(judgements: pd.DataFrame, ids: list[str]) -> DecidedPairs:
    """Training pairs (winner index, loser index) into ``ids`` from a whole record.

    Undone decisions and skips are left out; ``best`` lines vote best > each other image;
    ``score`` lines are averaged per image (``_score_votes``); votes on the same unordered pair
    are pooled across annotators and lines: the majority wins, "tie" votes count for neither
    side, pairs with equal votes are skipped. Rows follow each pair's first appearance.
    """
    index = {sample_id: position for position, sample_id in enumerate(ids)}
    live = live_judgements(judgements)
    dropped = Counter({"undone decisions": int(judgements["kind"].eq("undo").sum())})
    votes: _Votes = defaultdict(Counter)
    for row in live.itertuples():
        for image in judged_images(row):
            if image not in index:
                raise InputFileError(f"judged image id {image!r} is not among the samples")
        if row.kind == "pair":
            _vote(votes, row.a, row.b, row.winner)
        elif row.kind == "best":
            for other in row.images:
                if other != row.best:
                    _vote(votes, row.best, other, "a")
    _score_votes(live, votes, dropped)
    pairs, conflicting = [], 0
    for (first, second), counter in votes.items():
        if counter[first] and counter[second]:
            conflicting += counter[first] != counter[second]
        if counter[first] == counter[second]:
            reason = "only tie votes" if not counter[first] else "votes split evenly"
            dropped[reason] += 1
        elif counter[first] > counter[second]:
            pairs.append((index[first], index[second]))
        else:
            pairs.append((index[second], index[first]))
    # unary + keeps the reasons whose count is > 0
    return DecidedPairs(np.array(pairs, dtype=np.int64).reshape(-1, 2), +dropped, conflicting)


def judgements_to_pairs(judgements: pd.DataFrame, ids: list[str]) -> np.ndarray:
    """(N, 2) (winner index, loser index) pairs into ``ids`` (see ``decide_pairs``).

    What is dropped (undone, ties, split votes, equal mean scores) is logged.
    """
    decided = decide_pairs(judgements, ids)
    if decided.dropped or decided.conflicting:
        logger.warning("judgements: %s", decided.summary())
    return decided.pairs


def _judgement_line(judgement: dict[str, Any]) -> str:
    kind = judgement.get("kind", "pair")
    names = [name for name in ("kind", "decision") if name in judgement]
    names += [*KIND_FIELDS[kind], "annotator", "time"]
    names += [name for name in ("protocol", "seconds") if name in judgement]
    return json.dumps({name: judgement[name] for name in names}, ensure_ascii=False)


def append_judgements(path: Path, judgements: list[dict[str, Any]]) -> None:
    """Validate every judgement, then append them as lines to ``path`` and sync them (through
    ``JudgementRecord``: locked against a labelling app writing to it, its end repaired)."""
    path = Path(path)
    for number, judgement in enumerate(judgements, start=1):
        validate_judgement(judgement, where=f"{path.name} (new judgement {number})")
    text = "".join(_judgement_line(judgement) + "\n" for judgement in judgements)
    with closing(JudgementRecord(path)) as record:
        record.wait_durable(record.write_line(text.encode("utf-8")))


class JudgementRecord:
    """A judgement record open for appending: each line on disk (fsync) before it is confirmed.

    Every writer goes through it: the labelling app for its lifetime, an import or the toy
    annotator for one batch. The file is locked (``flock``), so that no second writer appends
    at the same time, and its end is repaired on opening (``_end_last_line``). Lines from
    several threads are written in order under a lock; the fsync that makes them durable is
    shared (group commit): a thread waiting for its line either finds it already synced by
    another thread's fsync or runs one that covers every line written so far.

    A write that fails (a full disk, a quota) is cut off the file again, so that no part of
    it joins the next line. After a failed fsync, or a cut that failed, what is on disk is
    unknown: every later write is refused (an OSError saying so) until the record is opened
    again, which reads the file as it is.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write_lock, self._sync_lock = threading.Lock(), threading.Lock()
        self._written = self._synced = 0  # lines written to the OS / known to be on disk
        self._failure: OSError | None = None  # what left the file in an unknown state
        # unbuffered: a failed write leaves no bytes behind in a buffer to reach the file later
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise InputFileError(
                    f"{self.path}: another labelling app is writing this record"
                ) from None
            self._end_last_line()
        except BaseException:
            os.close(self._fd)  # and the lock with it
            raise

    def _end_last_line(self) -> None:
        """A last line without its newline gets one if it is whole; cut off by a crash (not
        JSON), it is removed, its text logged: no decision on it was confirmed, and a line
        appended after it would make it a bad line inside the record."""
        tail = self.path.read_bytes().rpartition(b"\n")[2]
        if not tail:
            return
        try:
            json.loads(tail.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            logger.warning("%s: removing a cut-off last line: %r", self.path.name, tail)
            os.ftruncate(self._fd, os.lseek(self._fd, 0, os.SEEK_END) - len(tail))
            os.fsync(self._fd)
            return
        self.wait_durable(self.write_line(b"\n"))

    def write_line(self, data: bytes) -> int:
        """Hand ``data`` to the OS, in order; returns the ticket ``wait_durable`` takes."""
        with self._write_lock:
            self._refuse_if_failed()
            end = os.lseek(self._fd, 0, os.SEEK_END)
            try:
                self._write_all(data)
            except OSError as error:
                try:
                    os.ftruncate(self._fd, end)
                except OSError:
                    self._failure = error
                raise
            self._written += 1
            return self._written

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def wait_durable(self, ticket: int) -> None:
        """Return once the line of ``ticket`` (and every earlier one) is on disk."""
        with self._sync_lock:
            if self._synced >= ticket:
                return  # another thread's fsync covered it
            self._refuse_if_failed()
            covered = self._written  # every line up to here has reached the OS
            try:
                os.fsync(self._fd)
            except OSError as error:
                self._failure = error
                raise
            self._synced = covered

    def _refuse_if_failed(self) -> None:
        if self._failure is not None:
            raise OSError(
                self._failure.errno,
                f"{self.path}: an earlier write failed ({self._failure.strerror}), so what is "
                "on disk is unknown; restart the labelling app to go on from the file",
            )

    def write(self, judgement: dict[str, Any]) -> int:
        """Validate and write one line (not yet synced); returns its ticket."""
        validate_judgement(judgement, where=f"{self.path.name} (new judgement)")
        return self.write_line((_judgement_line(judgement) + "\n").encode("utf-8"))

    def append(self, judgement: dict[str, Any]) -> None:
        """Validate and append one line; it is on disk when this returns."""
        self.wait_durable(self.write(judgement))

    def close(self) -> None:
        with self._write_lock, self._sync_lock:
            if self._fd >= 0:  # once: the number may name another file afterwards
                os.close(self._fd)  # also releases the flock
                self._fd = -1
