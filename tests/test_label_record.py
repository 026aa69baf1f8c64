"""The judgements record: every line kind, undo, score averaging, votes, and the checks."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pandas as pd
import pytest

from d3po import preferences

TIME = "2026-11-30T12:00:00+00:00"
#: Two prompts x 3 images (groups 0 and 1) and a second group of "a red circle" (group 2).
MANIFEST = pd.DataFrame(
    {
        "id": ["r0", "r1", "r2", "b0", "b1", "b2", "s0", "s1"],
        "prompt": ["a red circle"] * 3 + ["a blue square"] * 3 + ["a red circle"] * 2,
        "group": [0, 0, 0, 1, 1, 1, 2, 2],
        "seed": [1, 1, 1, 2, 2, 2, 3, 3],
        "path": [f"{i}.png" for i in ["r0", "r1", "r2", "b0", "b1", "b2", "s0", "s1"]],
    }
)
IDS = list(MANIFEST["id"])


def best(decision, chosen, images, annotator="ana", prompt="a red circle"):
    return {"kind": "best", "decision": decision, "prompt": prompt, "images": images,
            "best": chosen, "annotator": annotator, "time": TIME, "protocol": "best"}  # fmt: skip


def score(decision, scores, annotator, prompt="a red circle"):
    return {"kind": "score", "decision": decision, "prompt": prompt, "scores": scores,
            "annotator": annotator, "time": TIME, "protocol": "score"}  # fmt: skip


def pair(a, b, winner, annotator="ana", prompt="a red circle", **extra):
    return {"prompt": prompt, "a": a, "b": b, "winner": winner, "annotator": annotator,
            "time": TIME, **extra}  # fmt: skip


def undo(decision, annotator="ana"):
    return {"kind": "undo", "undoes": decision, "annotator": annotator, "time": TIME}


def write(tmp_path: Path, lines: list[dict], prefix: str = "") -> Path:
    path = tmp_path / "labels.jsonl"
    path.write_text(prefix + "".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def pairs_of(path: Path) -> preferences.DecidedPairs:
    table = preferences.read_judgements(path, manifest=MANIFEST)
    return preferences.decide_pairs(table, IDS)


def named(decided: preferences.DecidedPairs) -> list[tuple[str, str]]:
    return [(IDS[w], IDS[loser]) for w, loser in decided.pairs]


def test_best_of_k_gives_best_over_each_other_image(tmp_path):
    decided = pairs_of(write(tmp_path, [best("d1", "r1", ["r0", "r1", "r2"])]))
    assert named(decided) == [("r1", "r0"), ("r1", "r2")]
    assert not decided.dropped


def test_an_undone_decision_trains_nothing_and_is_counted(tmp_path):
    lines = [
        best("d1", "r1", ["r0", "r1", "r2"]),
        undo("d1"),
        best("d2", "r2", ["r0", "r1", "r2"]),
    ]
    decided = pairs_of(write(tmp_path, lines))
    assert named(decided) == [("r2", "r0"), ("r2", "r1")]
    assert decided.dropped == {"undone decisions": 1}
    live = preferences.live_judgements(preferences.read_judgements(tmp_path / "labels.jsonl"))
    assert list(live["decision"]) == ["d2"]


def test_scores_are_averaged_across_annotators_and_equal_means_skipped(tmp_path):
    lines = [
        score("d1", {"r0": 1, "r1": 0, "r2": 1}, "ana"),
        score("d2", {"r0": 1, "r1": 1, "r2": 0}, "ben"),
        score("d3", {"r0": 1, "r1": 0, "r2": 1}, "cy"),
    ]
    # means: r0 = 1, r1 = 1/3, r2 = 2/3: a full order, no tie
    assert named(pairs_of(write(tmp_path, lines))) == [("r0", "r1"), ("r0", "r2"), ("r2", "r1")]
    decided = pairs_of(write(tmp_path, lines[:2]))  # r0 = 1, r1 = r2 = 0.5: one tie
    assert named(decided) == [("r0", "r1"), ("r0", "r2")]
    assert decided.dropped == {"equal mean scores": 1}


def test_conflicting_votes_are_majority_voted_and_counted(tmp_path):
    lines = [
        pair("r0", "r1", "a", "ana"),
        pair("r1", "r0", "b", "ben"),  # the same pair, swapped: r0 again
        pair("r0", "r1", "b", "cy"),  # outvoted 2:1
        pair("b0", "b1", "a", "ana", prompt="a blue square"),
        pair("b0", "b1", "b", "ben", prompt="a blue square"),  # 1:1, dropped
        pair("b1", "b2", "tie", "ana", prompt="a blue square"),  # only a tie, dropped
    ]
    decided = pairs_of(write(tmp_path, lines))
    assert named(decided) == [("r0", "r1")]
    assert decided.conflicting == 1
    assert decided.dropped == {"votes split evenly": 1, "only tie votes": 1}
    assert "2 dropped" not in decided.summary() and "1 dropped: only tie votes" in decided.summary()


def test_judgements_to_pairs_keeps_its_signature_and_logs_what_it_drops(tmp_path, caplog):
    path = write(tmp_path, [pair("r0", "r1", "tie"), pair("r0", "r2", "a")])
    pairs = preferences.judgements_to_pairs(preferences.read_judgements(path), IDS)
    assert pairs.tolist() == [[0, 2]]
    assert "1 dropped: only tie votes" in caplog.text


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = write(tmp_path, [pair("r0", "r1", "a")], prefix="\ufeff")
    assert named(pairs_of(path)) == [("r0", "r1")]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (pair("r0", "s0", "a"), r"line 2: images r0, s0 come from different groups"),
        (best("d9", "r0", ["r0", "s1"]), r"line 2: images r0, s1 come from different groups"),
        (pair("r0", "r1", "a", prompt="a blue square"), r"line 2: field 'prompt' is 'a blue sq"),
        (score("d9", {"b0": 1, "b1": 0}, "ana"), r"line 2: field 'prompt' is 'a red circle'"),
        (best("d9", "b0", ["r0", "r1"]), r"line 2: field 'best' must be one of 'images'"),
        (undo("nope"), r"line 2: undoes 'nope', which is no earlier decision of 'ana'"),
        (undo("d1", "ben"), r"line 2: undoes 'd1', which is no earlier decision of 'ben'"),
        (best("d1", "r0", ["r0", "r1"]), r"line 2: decision id 'd1' is used twice"),
        ({**pair("r0", "r1", "a"), "kind": "rank"}, r"line 2: field 'kind' must be one of"),
        (
            score("d9", {"r0": "good"}, "ana"),
            r"line 2: field 'scores' gives image 'r0' a non-number",
        ),
        ({**pair("r0", "r1", "a"), "seconds": -1}, r"line 2: field 'seconds' must be a number"),
        ({**pair("r0", "r1", "a"), "kind": ["pair"]}, r"line 2: field 'kind' must be one of"),
        (score("d9", {"r0": 10**400}, "ana"), r"line 2: field 'scores' gives image 'r0' a non-"),
    ],
)
def test_bad_lines_are_errors_naming_file_and_line(tmp_path, line, message):
    path = write(tmp_path, [best("d1", "r1", ["r0", "r1", "r2"]), line])
    with pytest.raises(ValueError, match=f"labels.jsonl {message}"):
        preferences.read_judgements(path, manifest=MANIFEST)


def test_undoing_twice_is_an_error(tmp_path):
    path = write(tmp_path, [best("d1", "r1", ["r0", "r1"]), undo("d1"), undo("d1")])
    with pytest.raises(ValueError, match="labels.jsonl line 3: decision 'd1' is already undone"):
        preferences.read_judgements(path)


def test_a_line_cut_off_by_a_crash_is_ignored_only_at_the_end(tmp_path, caplog):
    path = write(tmp_path, [pair("r0", "r1", "a")])
    with path.open("a") as handle:
        handle.write('{"prompt": "a red ci')  # no newline: the write was cut short
    assert len(preferences.read_judgements(path)) == 1
    assert "line 2: ignoring a cut-off last line" in caplog.text
    with path.open("a") as handle:
        handle.write("\n" + json.dumps(pair("r0", "r2", "a")) + "\n")
    with pytest.raises(ValueError, match="labels.jsonl line 2: invalid JSON"):
        preferences.read_judgements(path)


def test_the_record_writer_syncs_each_line_and_locks_the_file(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text(json.dumps(pair("r0", "r1", "a")))  # a last line without its newline
    record = preferences.JudgementRecord(path)
    with pytest.raises(ValueError, match="another labelling app is writing this record"):
        preferences.JudgementRecord(path)
    record.append(best("d1", "r2", ["r0", "r1", "r2"]))
    with pytest.raises(ValueError, match="field 'winner'"):
        record.append(pair("r0", "r1", "left"))
    record.close()
    table = preferences.read_judgements(path, manifest=MANIFEST)
    assert list(table["kind"]) == ["pair", "best"]
    preferences.JudgementRecord(path).close()  # the lock went with the first writer


def test_writers_remove_a_cut_off_last_line_so_that_the_record_stays_readable(tmp_path, caplog):
    path = write(tmp_path, [pair("r0", "r1", "a")])
    whole = path.read_bytes()
    with path.open("ab") as handle:
        handle.write('{"prompt": "a red caf\u00e9'.encode()[:-1])  # cut inside the é
    assert len(preferences.read_judgements(path)) == 1  # ignored by readers, with a warning
    record = preferences.JudgementRecord(path)  # what the app opens when it restarts
    assert path.read_bytes() == whole
    assert "removing a cut-off last line" in caplog.text
    record.append(pair("r0", "r2", "b"))
    record.close()
    preferences.append_judgements(path, [pair("r1", "r2", "tie")])
    table = preferences.read_judgements(path, manifest=MANIFEST)
    assert list(table["winner"]) == ["a", "b", "tie"] and list(table["line"]) == [1, 2, 3]


def test_a_bad_byte_inside_the_record_is_an_error_naming_its_line(tmp_path):
    path = write(tmp_path, [pair("r0", "r1", "a")])
    path.write_bytes(path.read_bytes() + b'{"prompt": "\xff"}\n' + path.read_bytes())
    with pytest.raises(ValueError, match="labels.jsonl line 2: invalid JSON"):
        preferences.read_judgements(path)


def test_appending_is_refused_while_an_app_writes_the_record(tmp_path):
    path = write(tmp_path, [pair("r0", "r1", "a")])
    before = path.read_bytes()
    record = preferences.JudgementRecord(path)
    with pytest.raises(ValueError, match="another labelling app is writing this record"):
        preferences.append_judgements(path, [pair("r0", "r2", "b")])
    record.close()
    assert path.read_bytes() == before


def test_a_failed_write_leaves_no_bytes_and_a_failed_sync_stops_the_writer(tmp_path, monkeypatch):
    path = write(tmp_path, [pair("r0", "r1", "a")])
    before = path.read_bytes()
    record = preferences.JudgementRecord(path)

    def disk_full_halfway(data):
        os.write(record._fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(record, "_write_all", disk_full_halfway)
    with pytest.raises(OSError, match="No space left"):
        record.append(pair("r0", "r2", "b"))
    assert path.read_bytes() == before  # the half line was cut off again
    monkeypatch.undo()
    record.append(pair("r0", "r2", "b"))  # space again: the writer goes on

    def io_error(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(preferences.os, "fsync", io_error)
    with pytest.raises(OSError, match="Input/output error"):
        record.append(pair("r1", "r2", "tie"))
    monkeypatch.undo()
    with pytest.raises(OSError, match="an earlier write failed .* restart the labelling app"):
        record.append(pair("r1", "r2", "a"))  # what reached the disk is unknown: no more
    record.close()
    reopened = preferences.JudgementRecord(path)  # goes on from the file as it is
    reopened.append(pair("r1", "r2", "a"))
    reopened.close()
    assert list(preferences.read_judgements(path)["winner"])[:2] == ["a", "b"]


def test_a_writer_that_fails_to_open_or_is_closed_twice_holds_nothing(tmp_path, monkeypatch):
    path = write(tmp_path, [pair("r0", "r1", "a")])

    def disk_full(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(preferences.JudgementRecord, "_end_last_line", disk_full)
    with pytest.raises(OSError, match="No space left"):
        preferences.JudgementRecord(path)
    monkeypatch.undo()
    record = preferences.JudgementRecord(path)  # the failed opening left no lock behind
    record.close()
    other = tmp_path / "other.txt"
    with other.open("w") as handle:  # may reuse the closed record's file descriptor
        record.close()
        handle.write("still open")
    assert other.read_text() == "still open"
