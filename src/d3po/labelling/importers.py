"""Judgements made elsewhere, written as our JSON Lines record (``d3po label-import``).

- ``reference``: the D3PO reference implementation's human labels: one JSON file per annotator
  (the file name is the annotator), holding a list with one entry per prompt, in the order the
  set was sampled, each entry the list of that prompt's K scores (e.g. 1 good, 0 deformed).
  The reference averages the files per image and orders each prompt's images by the mean;
  ``score`` lines give exactly that (``preferences.decide_pairs``).
- ``label-studio``: Label Studio's JSON export of a pairwise project (``<Pairwise>`` tag over
  two ``<Image>`` tags): per task, two image URLs in ``data`` and per annotation a result of
  type ``pairwise`` with ``value.selected`` ``left`` or ``right``. Images are matched to the
  sample set by file name (Label Studio prefixes uploads with ``xxxxxxxx-``; local storage
  names the file in the URL's ``d`` parameter).

Each imported line's ``decision`` id names its source (``reference:ANNOTATOR:PROMPT``,
``label-studio:TASK:ANNOTATION``), so that an import repeated into the same record is refused
instead of counting its votes twice, and an imported decision can be undone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import pandas as pd

from d3po.errors import InputFileError
from d3po.preferences import (
    append_judgements,
    check_against_manifest,
    index_manifest,
    read_judgements,
    timestamp,
    validate_judgement,
)
from d3po.sample_sets import read_manifest


def _load_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise InputFileError(f"{path}: invalid JSON ({error.msg}, line {error.lineno})") from None
    except UnicodeDecodeError as error:
        raise InputFileError(f"{path}: not UTF-8 text (byte {error.start})") from None


def _write(samples_dir: Path, out: Path, lines: list[tuple[str, dict[str, Any]]]) -> int:
    """Check every (where, line) against the set and the record's decision ids, then append
    them all to ``out``."""
    manifest = index_manifest(read_manifest(samples_dir))
    decisions = set(read_judgements(out)["decision"].dropna()) if Path(out).is_file() else set()
    for where, line in lines:
        validate_judgement(line, where, set(manifest.index))
        check_against_manifest(line, where, manifest)
        if line["decision"] in decisions:
            raise InputFileError(
                f"{where}: decision {line['decision']!r} is already in {Path(out).name} (imported "
                "twice?); nothing was appended"
            )
        decisions.add(line["decision"])
    append_judgements(out, [line for _, line in lines])
    return len(lines)


def import_reference(samples_dir: Path, files: list[Path], out: Path) -> int:
    """One ``score`` line per prompt and file; returns the number of lines written."""
    groups = [rows for _, rows in read_manifest(samples_dir).groupby("group", sort=True)]
    lines = []
    for path in map(Path, files):
        scores = _load_json(path)
        if not isinstance(scores, list) or len(scores) > len(groups):
            raise InputFileError(
                f"{path}: expected a list of at most {len(groups)} prompts' scores (one list of "
                "K numbers per prompt, in sampling order)"
            )
        # a file may stop early: the prompts after its last entry are left unjudged
        for number, (entry, rows) in enumerate(zip(scores, groups, strict=False), start=1):
            where = f"{path.name} prompt {number}"
            if not isinstance(entry, list) or len(entry) != len(rows):
                raise InputFileError(
                    f"{where}: expected a list of {len(rows)} scores, got {entry!r}"
                )
            line = {
                "kind": "score",
                "decision": f"reference:{path.stem}:{number}",
                "prompt": str(rows["prompt"].iloc[0]),
                "scores": dict(zip(rows["id"].astype(str), entry, strict=True)),
                "annotator": path.stem,
                "time": timestamp(),
                "protocol": "score",
            }
            lines.append((where, line))
    return _write(samples_dir, out, lines)


def _image_ids(manifest: pd.DataFrame) -> dict[str, str]:
    """File name (and id) -> image id."""
    ids = manifest["id"].astype(str)
    names = manifest["path"].map(lambda path: Path(path).name)
    return dict(zip(ids, ids, strict=True)) | dict(zip(names, ids, strict=True))


def _match(url: Any, ids: dict[str, str], where: str) -> str:
    parsed = urlparse(str(url))
    # local storage serves /data/local-files/?d=FOLDER/FILE; uploads and URLs name the path
    name = Path(parse_qs(parsed.query).get("d", [unquote(parsed.path)])[0]).name
    for candidate in (name, name.split("-", 1)[-1], Path(name).stem):
        if candidate in ids:
            return ids[candidate]
    raise InputFileError(f"{where}: image {url!r} matches no image of the sample set")


def _annotator(annotation: dict[str, Any], where: str) -> str:
    """Who made the annotation (``completed_by``: a user object, or the bare user id); an
    error when it names nobody, rather than pooling such annotations as one annotator."""
    who = annotation.get("completed_by")
    name = (who.get("email") or who.get("id")) if isinstance(who, dict) else who
    if not isinstance(name, int | str) or isinstance(name, bool) or name == "":
        raise InputFileError(f"{where}: an annotation's 'completed_by' names no annotator: {who!r}")
    return str(name) if isinstance(who, dict) else f"label-studio-{name}"


def _object(value: Any, what: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputFileError(f"{where}: {what} must be a JSON object, got {value!r}")
    return value


def _selection(annotation: Any, where: str) -> str | None:
    """An annotation's pairwise choice, ``left`` or ``right``; None when it was cancelled or
    holds no pairwise result."""
    annotation = _object(annotation, "an annotation", where)
    results = annotation.get("result", [])
    if not isinstance(results, list):
        raise InputFileError(f"{where}: an annotation's 'result' must be a list")
    selected = []
    for result in results:
        if _object(result, "a result", where).get("type") == "pairwise":
            value = result.get("value")
            selected.append(value.get("selected") if isinstance(value, dict) else value)
    if annotation.get("was_cancelled") or not selected:
        return None
    if selected[0] not in ("left", "right"):
        raise InputFileError(f"{where}: pairwise selection {selected[0]!r} is not left/right")
    return selected[0]


def import_label_studio(
    samples_dir: Path, export: Path, out: Path, fields: tuple[str, str] = ("image1", "image2")
) -> int:
    """One ``pair`` line per pairwise annotation (left = ``a``); returns the lines written."""
    manifest = read_manifest(samples_dir)
    ids = _image_ids(manifest)
    prompt_of = dict(zip(manifest["id"].astype(str), manifest["prompt"], strict=True))
    tasks = _load_json(export)
    if not isinstance(tasks, list):
        raise InputFileError(f"{export}: expected Label Studio's JSON export (a list of tasks)")
    lines = []
    for number, task in enumerate(tasks, start=1):
        task = _object(task, "a task", f"{Path(export).name} task {number}")
        where = f"{Path(export).name} task {task.get('id', number)}"
        data = _object(task.get("data", {}), "'data'", where)
        missing = [name for name in fields if name not in data]
        if missing:
            raise InputFileError(
                f"{where}: data has no field(s) {missing}; pass --fields LEFT,RIGHT"
            )
        a, b = (_match(data[name], ids, where) for name in fields)
        annotations = task.get("annotations", [])
        if not isinstance(annotations, list):
            raise InputFileError(f"{where}: 'annotations' must be a list")
        for index, annotation in enumerate(annotations, start=1):
            selected = _selection(annotation, where)
            if selected is None:
                continue
            line = {
                "kind": "pair",
                "decision": f"label-studio:{task.get('id', number)}:{annotation.get('id', index)}",
                "prompt": str(prompt_of[a]),
                "a": a,
                "b": b,
                "winner": "a" if selected == "left" else "b",
                "annotator": _annotator(annotation, where),
                "time": annotation.get("created_at") or timestamp(),
                "protocol": "pairwise",
            }
            lines.append((where, line))
    return _write(samples_dir, out, lines)
