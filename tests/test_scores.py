"""Score tables are checked when read: every image once, finite values, the right proxy name;
an error names the file and the first bad row."""

from __future__ import annotations

from pathlib import Path

import pytest

from d3po.scores import ScoreFileError, read_scores

IDS = ["0000_00", "0000_01", "0001_00"]


def write(tmp_path: Path, rows: list[str], header: str = "id,proxy,value") -> Path:
    path = tmp_path / "brightness.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_a_good_table_is_read_in_file_order(tmp_path):
    path = write(
        tmp_path, ["0001_00,brightness,0.5", "0000_00,brightness,1", "0000_01,brightness,-2e-3"]
    )
    table = read_scores(path, "brightness", IDS)
    assert list(table["id"]) == ["0001_00", "0000_00", "0000_01"]
    assert table["value"].tolist() == [0.5, 1.0, -0.002]


BAD_TABLES = {
    "wrong proxy": (["0000_00,clip,1", "0000_01,clip,1"], "line 2: proxy is 'clip'"),
    "unknown id": (["0000_00,brightness,1", "0009_00,brightness,1"], "line 3: id '0009_00'"),
    "twice": (
        ["0000_00,brightness,1", "0000_00,brightness,2"],
        "line 3: id '0000_00' is scored twice",
    ),
    "nan": (["0000_00,brightness,1", "0000_01,brightness,nan"], "line 3: value 'nan'"),
    "inf": (["0000_00,brightness,inf"], "line 2: value 'inf'"),
    "empty": (["0000_00,brightness,"], "line 2: value ''"),
    "text": (["0000_00,brightness,high"], "line 2: value 'high'"),
    "missing": (
        ["0000_00,brightness,1", "0000_01,brightness,1"],
        "1 image(s) of the sample set are not scored, the first is '0001_00'",
    ),
}


@pytest.mark.parametrize("case", BAD_TABLES)
def test_a_bad_table_names_the_file_and_the_first_bad_row(tmp_path, case):
    rows, message = BAD_TABLES[case]
    path = write(tmp_path, rows)
    with pytest.raises(ScoreFileError) as error:
        read_scores(path, "brightness", IDS)
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_a_table_without_its_columns_says_which(tmp_path):
    path = write(tmp_path, ["0000_00,1"], header="id,value")
    with pytest.raises(ScoreFileError, match=r"missing column\(s\) \['proxy'\]"):
        read_scores(path, "brightness")
