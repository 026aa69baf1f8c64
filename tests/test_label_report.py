"""Label report (counts, agreement, training yield) and the importers of other formats."""

from __future__ import annotations

import json
from collections import Counter
from itertools import permutations

import numpy as np
import pytest

from d3po.cli import main
from d3po.labelling.benchmark import write_world_set
from d3po.labelling.importers import import_label_studio, import_reference
from d3po.labelling.report import label_report
from d3po.preferences import append_judgements, decide_pairs, read_judgements
from d3po.sample_sets import read_manifest

TIME = "2026-11-30T12:00:00+00:00"


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """3 prompts x 3 toy-world images: ids 0000_00 .. 0002_02."""
    folder = tmp_path_factory.mktemp("report") / "samples"
    write_world_set(folder, prompts=3, images_per_prompt=3, seed=4)
    return folder


def best(decision, group, chosen, annotator, seconds=2.0):
    """A best-of-3 line on prompt ``group`` (the prompt is filled in by ``with_prompts``)."""
    images = [f"000{group}_0{i}" for i in range(3)]
    line = {"kind": "best", "decision": decision, "images": images, "best": images[chosen]}
    return {**line, "group": group, "annotator": annotator, "time": TIME, "seconds": seconds}


def with_prompts(lines, manifest):
    prompts = manifest.groupby("group")["prompt"].first()
    return [
        {k: v for k, v in line.items() if k != "group"} | {"prompt": prompts[line["group"]]}
        if "group" in line
        else line
        for line in lines
    ]


def nominal_alpha(units: list[list[str]]) -> float:
    """Krippendorff's alpha (nominal) from its coincidence matrix, written out for the test."""
    coincidences: Counter[tuple[str, str]] = Counter()
    for values in units:
        if len(values) < 2:
            continue
        for c, k in permutations(range(len(values)), 2):
            coincidences[values[c], values[k]] += 1 / (len(values) - 1)
    totals: Counter[str] = Counter()
    for (c, _), weight in coincidences.items():
        totals[c] += weight
    n = sum(totals.values())
    observed = sum(w for (c, k), w in coincidences.items() if c != k)
    expected = sum(totals[c] * totals[k] for c in totals for k in totals if c != k)
    return 1 - (n - 1) * observed / expected


def test_counts_agreement_and_training_yield(samples, tmp_path, capsys):
    lines = [
        best("a0", 0, 0, "ana"), best("b0", 0, 0, "ben"), best("c0", 0, 1, "cy"),
        best("a1", 1, 0, "ana"), best("b1", 1, 2, "ben"),
        {"kind": "undo", "undoes": "b1", "annotator": "ben", "time": TIME},
        best("b1x", 1, 1, "ben"),
        {"kind": "skip", "decision": "c1", "group": 1,
         "images": ["0001_00", "0001_01", "0001_02"], "annotator": "cy", "time": TIME},
        best("a2", 2, 1, "ana", 4.0), best("b2", 2, 1, "ben"), best("c2", 2, 1, "cy"),
    ]  # fmt: skip
    record = tmp_path / "labels.jsonl"
    manifest = read_manifest(samples)
    append_judgements(record, with_prompts(lines, manifest))
    report = label_report(manifest, read_judgements(record, manifest=manifest))
    rows = {row["annotator"]: row for row in report["annotators"]}
    assert [rows[w]["decisions"] for w in ("ana", "ben", "cy")] == [3, 3, 2]
    assert (rows["ben"]["undos"], rows["cy"]["skips"]) == (1, 1)
    assert rows["ana"]["median_seconds_per_prompt"] == 2.0
    choice = report["agreement"]["choice"]
    # shared prompts: ana/ben 3 (agree on 0 and 2), ana/cy 2 (agree on 2), ben/cy 2 (on 2)
    assert choice["pairwise_agreement"] == pytest.approx(4 / 7)
    units = [["0000_00", "0000_00", "0000_01"], ["0001_00", "0001_01"], ["0002_01"] * 3]
    assert choice["krippendorff_alpha"] == pytest.approx(nominal_alpha(units))
    # prompt 0: 2 votes to 1 (decided by majority, 2 pairs + 1 pair); prompt 1: 0 > 2 and 1 > 2
    # uncontested, 0 vs 1 split; prompt 2: 1 > 0, 1 > 2
    decided = decide_pairs(read_judgements(record), list(manifest["id"]))
    assert report["training"] == {
        "pairs": len(decided.pairs),
        "conflicting_decided_by_majority": 1,
        "dropped": {"undone decisions": 1, "votes split evenly": 1},
    }
    assert len(decided.pairs) == 3 + 2 + 2
    main(["label-report", "--samples", str(samples), "--judgements", str(record)])
    printed = capsys.readouterr().out
    assert "Krippendorff's alpha (nominal)" in printed and "training pairs: 7" in printed


def test_reference_files_give_the_reference_pairs(samples, tmp_path):
    scores = {"ana": [[1, 0, 1], [0, 0, 1], [1, 1, 1]], "ben": [[1, 1, 0], [0, 1, 1]]}
    files = []
    for name, values in scores.items():
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(values))
    record = tmp_path / "labels.jsonl"
    assert import_reference(samples, files, record) == 5
    manifest = read_manifest(samples)
    decided = decide_pairs(read_judgements(record, manifest=manifest), list(manifest["id"]))
    # the reference: mean over annotators per image; ordered pairs within a prompt, ties skipped
    expected = []
    for group in range(3):
        lists = [v[group] for v in scores.values() if len(v) > group]
        mean = np.mean(lists, axis=0)
        for i in range(3):
            for j in range(i + 1, 3):
                if mean[i] != mean[j]:
                    expected.append(
                        (3 * group + i, 3 * group + j)[:: 1 if mean[i] > mean[j] else -1]
                    )
    assert sorted(map(tuple, decided.pairs.tolist())) == sorted(expected)
    before = record.read_bytes()
    with pytest.raises(ValueError, match="ana.json prompt 1: decision 'reference:ana:1' is alre"):
        import_reference(samples, files, record)  # a second import would count twice
    assert record.read_bytes() == before
    bad = tmp_path / "cy.json"
    bad.write_text(json.dumps([[1, 0]]))
    with pytest.raises(ValueError, match="cy.json prompt 1: expected a list of 3 scores"):
        import_reference(samples, [bad], record)


def label_studio_task(task_id, left, right, selections):
    annotations = [
        {"id": i, "completed_by": who, "created_at": TIME, "was_cancelled": selected is None,
         "result": [] if selected is None else [{"id": "x", "from_name": "pw", "to_name": "pw",
                                                 "type": "pairwise",
                                                 "value": {"selected": selected}}]}
        for i, (who, selected) in enumerate(selections)
    ]  # fmt: skip
    data = {
        "image1": f"/data/upload/1/3f9a1c2e-{left}.png",
        "image2": f"/data/local-files/?d=sets%2Fround1%2F{right}.png",  # local storage
    }
    return {"id": task_id, "data": data, "annotations": annotations}


def test_a_label_studio_pairwise_export_becomes_pair_lines(samples, tmp_path):
    export = tmp_path / "export.json"
    tasks = [
        label_studio_task(7, "0000_00", "0000_01", [(1, "left"), ({"email": "b@x"}, "right")]),
        label_studio_task(8, "0001_02", "0001_00", [(1, "right"), (2, None)]),
    ]
    export.write_text(json.dumps(tasks))
    record = tmp_path / "labels.jsonl"
    main(["label-import", "label-studio", str(export), "--samples", str(samples),
          "--out", str(record)])  # fmt: skip
    table = read_judgements(record, manifest=read_manifest(samples))
    assert list(zip(table["a"], table["b"], table["winner"], table["annotator"], strict=True)) == [
        ("0000_00", "0000_01", "a", "label-studio-1"),
        ("0000_00", "0000_01", "b", "b@x"),
        ("0001_02", "0001_00", "b", "label-studio-1"),
    ]
    export.write_text(json.dumps([label_studio_task(9, "0000_00", "0001_01", [(1, "left")])]))
    with pytest.raises(ValueError, match="export.json task 9: images 0000_00, 0001_01 come from"):
        import_label_studio(samples, export, tmp_path / "other.jsonl")
    assert not (tmp_path / "other.jsonl").exists()


def test_a_missing_judgements_file_is_one_line_naming_it(samples, tmp_path, capsys):
    absent = tmp_path / "absent.jsonl"
    with pytest.raises(SystemExit) as raised:
        main(["label-report", "--samples", str(samples), "--judgements", str(absent)])
    assert raised.value.code == 1
    error = capsys.readouterr().err
    assert error == f"d3po label-report: error: judgements file not found: {absent}\n"


@pytest.mark.parametrize(
    ("break_export", "message"),
    [
        (lambda tasks: tasks.append("task"), "export.json task 2: a task must be a JSON object"),
        (lambda tasks: tasks[0].update(data=[]), "task 7: 'data' must be a JSON object"),
        (lambda tasks: tasks[0].update(annotations={}), "task 7: 'annotations' must be a list"),
        (lambda tasks: tasks[0]["annotations"].append(3), "task 7: an annotation must be a JSON"),
        (lambda tasks: tasks[0]["annotations"][0].update(result=[[]]), "task 7: a result must be"),
        (
            lambda tasks: tasks[0]["annotations"][0]["result"][0].pop("value"),
            "task 7: pairwise selection None is not left/right",
        ),
        (
            lambda tasks: tasks[0]["annotations"][0].pop("completed_by"),
            "task 7: an annotation's 'completed_by' names no annotator: None",
        ),
        (
            lambda tasks: tasks[0]["annotations"][0].update(completed_by={"first_name": "Ana"}),
            "task 7: an annotation's 'completed_by' names no annotator: {'first_name'",
        ),
    ],
)
def test_a_malformed_label_studio_export_is_one_line_naming_the_task(
    samples, tmp_path, break_export, message
):
    tasks = [label_studio_task(7, "0000_00", "0000_01", [(1, "left")])]
    break_export(tasks)
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    with pytest.raises(ValueError, match=message):
        import_label_studio(samples, export, tmp_path / "labels.jsonl")
    assert not (tmp_path / "labels.jsonl").exists()


@pytest.mark.parametrize(
    ("make_input", "out_name", "message"),
    [
        (lambda path: None, "labels.jsonl", "ana.json: No such file or directory"),
        (lambda path: path.write_bytes(b"\xff\xfe[[1]]"), "labels.jsonl", "ana.json: not UTF-8"),
        (lambda path: path.write_text("[[1, 0, 1]]"), "", ": Is a directory"),
    ],
    ids=["missing", "not-utf8", "out-is-a-folder"],
)
def test_an_import_file_that_cannot_be_read_or_written_is_one_line_naming_it(
    samples, tmp_path, capsys, make_input, out_name, message
):
    make_input(tmp_path / "ana.json")
    out = tmp_path / out_name  # "": the folder itself
    with pytest.raises(SystemExit) as raised:
        main(["label-import", "reference", str(tmp_path / "ana.json"), "--samples", str(samples),
              "--out", str(out)])  # fmt: skip
    error = capsys.readouterr().err
    assert raised.value.code == 1 and error.count("\n") == 1 and "Traceback" not in error
    assert error.startswith("d3po label-import: error: ") and message in error
    assert not (tmp_path / "labels.jsonl").exists()
