"""`d3po <step>`: errors the user can fix are one line; any other error keeps its traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from d3po import cli, rewards
from d3po.tables import EVALUATION_COLUMNS


def test_a_user_error_is_one_line_without_traceback(tmp_path: Path, capsys) -> None:
    table = f"jpeg_compressibility={tmp_path / 's.csv'}"
    arguments = ["score", "--samples", str(tmp_path), "--proxy", table]
    with pytest.raises(SystemExit) as raised:
        cli.main([*arguments, "--options", '{"jpeg_compressibility": {"qualty": 50}}'])
    assert raised.value.code == 1
    error = capsys.readouterr().err
    assert error.startswith("d3po score: error: proxies.jpeg_compressibility: unknown option")
    assert error.count("\n") == 1 and "Traceback" not in error


def test_an_internal_error_keeps_its_traceback(tmp_path: Path, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise ValueError("an internal error, not the user's")

    monkeypatch.setattr(rewards, "score_sample_dir", broken)
    with pytest.raises(ValueError, match="internal"):
        cli.main(
            ["score", "--samples", str(tmp_path)]
            + ["--proxy", f"jpeg_compressibility={tmp_path / 's.csv'}"]
        )


HEADER = "epoch,samples_seen,reward_mean\n"


@pytest.mark.parametrize(
    "text", ["", HEADER, HEADER + "1,32,0.5\n2,6"], ids=["empty", "header", "cut"]
)
def test_an_empty_or_truncated_metrics_file_is_an_error_naming_it(
    tmp_path: Path, capsys, text: str
) -> None:
    evaluation = tmp_path / "evaluation.csv"
    row = ("x", "base", 0, 0, 0, "jpeg_compressibility", -0.8, 0.01, 4, -0.81, -0.79, None)
    pd.DataFrame([row], columns=EVALUATION_COLUMNS[: len(row)]).to_csv(evaluation, index=False)
    metrics = tmp_path / "metrics.csv"
    metrics.write_text(text)
    with pytest.raises(SystemExit):
        cli.main(
            ["plot-curves", "--evaluation", str(evaluation), "--metrics", f"d3po={metrics}"]
            + ["--out", str(tmp_path / "curves.png")]
        )
    error = capsys.readouterr().err
    assert str(metrics) in error and error.count("\n") == 1
    assert not (tmp_path / "curves.png").exists()


@pytest.mark.parametrize(
    ("step", "option"),
    [("score", "--proxy"), ("train", "--scores"), ("sample", "--checkpoint")],
)
def test_a_repeated_list_option_adds_to_the_list(step: str, option: str) -> None:
    """`--proxy a=x --proxy b=y` means both (argparse's default keeps only the last)."""
    settings = ["--settings", "{}"]
    required = {
        "score": ["--samples", "d"],
        "train": [*settings, "--run-dir", "r", "--state-dir", "s"],
        "sample": settings,
    }[step]
    arguments = [step, *required, option, "a=x.csv", option, "b=y.csv", "c=z.csv"]
    parsed = vars(cli.build_parser().parse_args(arguments))
    labels = [label for label, _ in parsed[option.removeprefix("--")]]
    assert labels == ["a", "b", "c"]


def test_check_config_passes_every_shipped_config_and_refuses_a_list(tmp_path: Path, capsys):
    for config in sorted((Path(__file__).parents[1] / "config").glob("*.yaml")):
        cli.main(["check-config", str(config)])
    (tmp_path / "list.yaml").write_text("- epochs: 8\n")
    with pytest.raises(SystemExit):
        cli.main(["check-config", str(tmp_path / "list.yaml")])
    assert "list.yaml: expected config fields (a YAML mapping)" in capsys.readouterr().err
    (tmp_path / "latin1.yaml").write_bytes("experiments: {caf\xe9: {}}\n".encode("latin-1"))
    with pytest.raises(SystemExit):
        cli.main(["check-config", str(tmp_path / "latin1.yaml")])
    assert "latin1.yaml: not UTF-8 text (byte 17)" in capsys.readouterr().err


@pytest.mark.parametrize("step", ["gpu-smoke", "benchmark", "pretrain-toy", "label-benchmark"])
def test_every_step_answers_help(step: str, capsys) -> None:
    with pytest.raises(SystemExit) as raised:
        cli.main([step, "--help"])
    assert raised.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: d3po {step}")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["score", "--samples", "s", "--proxy", "a=x.csv", "--options", "[1]"], "--options"),
        (["collect", "--runs", "{}", "--out", "e.csv"], "--runs: expected a JSON list"),
        (["collect", "--runs", "[]", "--options", '"q"', "--out", "e.csv"], "--options"),
        (
            ["table", "--evaluation", "e.csv", "--out-csv", "t.csv", "--out-md", "t.md"]
            + ["--paper", "[1]"],
            "--paper: expected a JSON object",
        ),  # fmt: skip
    ],
)
def test_a_json_argument_of_the_wrong_shape_is_a_usage_error(
    arguments, message, capsys, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # the relative outputs, should a step run
    with pytest.raises(SystemExit) as raised:
        cli.main(arguments)
    assert raised.value.code == 2
    assert message in capsys.readouterr().err.splitlines()[-1]


def test_the_labelling_choices_are_those_of_the_package() -> None:
    from d3po.labelling.app import SCALES
    from d3po.preferences import PROTOCOLS

    assert (PROTOCOLS, tuple(SCALES)) == (cli.PROTOCOL_CHOICES, cli.SCALE_CHOICES)


@pytest.mark.parametrize("port", ["99999", "0", "-1", "http"])
def test_a_port_out_of_range_is_a_usage_error(port: str, capsys) -> None:
    with pytest.raises(SystemExit) as raised:
        cli.build_parser().parse_args(["label", "samples", "--judgements", "j", "--port", port])
    assert raised.value.code == 2
    assert f"--port: expected a TCP port, 1 to 65535, got '{port}'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "'{path}' is not JSON, nor a JSON file"),
        ('{"method": "d3po",\n', "{path}: not JSON (Expecting property name"),
        (b"\xff\xfe{}", "{path}: not JSON ('utf-8' codec can't decode"),
    ],
)
def test_a_settings_file_missing_or_not_json_is_a_usage_error_naming_it(
    content, message, tmp_path, capsys
):
    settings = tmp_path / "settings.json"
    if content is not None:
        settings.write_bytes(content if isinstance(content, bytes) else content.encode())
    arguments = ["--settings", str(settings), "--run-dir", "r", "--state-dir", "s"]
    with pytest.raises(SystemExit) as raised:
        cli.main(["train", *arguments])
    assert raised.value.code == 2
    last_line = capsys.readouterr().err.splitlines()[-1]
    assert f"argument --settings: {message.format(path=settings)}" in last_line
    if isinstance(content, str):  # where in the file
        assert "line 2 column 1" in last_line


def test_collect_with_no_run_writes_no_table(tmp_path, capsys):
    out = tmp_path / "evaluation.csv"
    with pytest.raises(SystemExit) as raised:
        cli.main(["collect", "--runs", "[]", "--out", str(out)])
    assert raised.value.code == 1
    assert "--runs: the list of run descriptions is empty" in capsys.readouterr().err
    assert not out.exists()


def test_bad_score_tables_and_run_descriptions_are_one_line_naming_them(tmp_path, capsys):
    table = tmp_path / "jpeg_size.csv"
    table.write_text("id,proxy,value\n0000_00,brightness,1\n")
    run = {"experiment": "x", "method": "d3po", "seed": 0, "epoch": 1, "samples_seen": 8}
    cases = [
        ([{**run, "scores": [str(table)]}], f"{table} line 2: proxy is 'brightness'"),
        ([{**run, "scores": [str(tmp_path / "absent.csv")]}], "score table not found"),
        ([1], "a run description has a list of paths 'scores', got 1"),
        ([{**run, "scores": [1]}], "a run description has a list of paths 'scores'"),
        ([{**run, "scores": []}], "a run description has a list of paths 'scores'"),
        ([{**run, "scores": [str(table)], "samples": 5}], "'samples' is a folder, got 5"),
    ]
    for runs, message in cases:
        with pytest.raises(SystemExit) as raised:
            cli.main(["collect", "--runs", json.dumps(runs), "--out", str(tmp_path / "e.csv")])
        assert raised.value.code == 1
        error = capsys.readouterr().err
        assert message in error and error.count("\n") == 1
    with pytest.raises(SystemExit):
        out = ["--out-csv", str(tmp_path / "t.csv"), "--out-md", str(tmp_path / "t.md")]
        cli.main(["table", "--evaluation", str(tmp_path / "absent.csv"), *out])
    assert (
        capsys.readouterr().err == f"d3po table: error: {tmp_path / 'absent.csv'}: no such file\n"
    )
