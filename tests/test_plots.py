"""Tests for d3po.plots on small synthetic tables: files are written and the numbers are right."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from d3po import plots, tables
from d3po.errors import ConfigError


def _write_scores(path: Path, values: dict[str, list[float]]) -> Path:
    rows = [
        {"id": f"s{i}", "proxy": proxy, "value": value}
        for proxy, proxy_values in values.items()
        for i, value in enumerate(proxy_values)
    ]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_collect_evaluation_means_over_images(tmp_path: Path) -> None:
    first = _write_scores(tmp_path / "a.csv", {"jpeg": [1.0, 2.0, 6.0], "aes": [5.0, 5.0, 5.0]})
    second = _write_scores(tmp_path / "b.csv", {"jpeg": [4.0, 8.0]})
    runs = [
        {"experiment": "jpeg", "method": "base", "seed": 0, "epoch": 0, "samples_seen": 0},
        {"experiment": "jpeg", "method": "d3po", "seed": 1, "epoch": 5, "samples_seen": 80},
    ]
    out_csv = tmp_path / "out" / "evaluation.csv"
    tables.collect_evaluation([first, second], runs, out_csv)
    table = pd.read_csv(out_csv)
    assert list(table.columns) == tables.EVALUATION_COLUMNS
    row = table[(table["method"] == "base") & (table["proxy"] == "jpeg")].iloc[0]
    assert row["mean"] == pytest.approx(3.0)
    assert row["std"] == pytest.approx(np.std([1.0, 2.0, 6.0]))
    assert row["n"] == 3
    half = 1.959964 * np.std([1.0, 2.0, 6.0], ddof=1) / np.sqrt(3)
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(3 - half), pytest.approx(3 + half))
    row = table[table["method"] == "d3po"].iloc[0]
    assert (row["mean"], row["n"], row["samples_seen"]) == (pytest.approx(6.0), 2, 80)
    assert len(table) == 3


def _markdown_rows(markdown: str) -> list[list[str]]:
    """The cells of the Markdown table's lines (to_markdown pads them), header first."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def _evaluation_table() -> pd.DataFrame:
    """Experiment 'jpeg' (objective proxy jpeg, also reports aes): base + two methods x 2 seeds."""
    rows = []
    for proxy, base in (("jpeg", 10.0), ("aes", 5.0)):
        for seed in (0, 1):
            rows.append(("jpeg", "base", seed, 0, 0, proxy, base + seed, 0.5, 4, 0.0, 99.0, None))
            for epoch in (1, 2):
                for method, gain in (("d3po", 3.0), ("ddpo", 1.0)):
                    value = base + seed + gain * epoch
                    run = ("jpeg", method, seed, epoch, 16 * epoch)
                    rows.append((*run, proxy, value, 0.5, 4, value - 1.0, value + 1.0, None))
    return pd.DataFrame(rows, columns=tables.EVALUATION_COLUMNS[:12])


def _rounds_table() -> pd.DataFrame:
    """Experiment 'hands' in two feedback rounds of 2 epochs: epochs 1-2 round 1, 3-4 round 2."""
    rows = [("hands", "base", 0, 0, 0, "safe", 0.5, 0.5, 8, 0.4, 0.6, 0)]
    for epoch, value in ((1, 0.55), (2, 0.6), (3, 0.7), (4, 0.8)):
        run = ("hands", "d3po", 0, epoch, 8 * epoch)
        rows.append((*run, "safe", value, 0.5, 8, value - 0.1, value + 0.1, (epoch + 1) // 2))
    return pd.DataFrame(rows, columns=tables.EVALUATION_COLUMNS[:12])


def test_results_table_has_a_row_per_feedback_round(tmp_path: Path) -> None:
    evaluation = tmp_path / "evaluation.csv"
    _rounds_table().to_csv(evaluation, index=False)
    paper = {"hands": {"base": 0.4, "d3po": 0.9}}
    summary = tables.results_table(
        [evaluation], tmp_path / "r.csv", tmp_path / "r.md", paper, {"hands": "safe"}
    )
    ends = dict(zip(summary["method"], summary["end_mean"], strict=True))
    assert ends == {"d3po round 1": pytest.approx(0.6), "d3po round 2": pytest.approx(0.8)}
    assert (summary["start_mean"] == 0.5).all()
    # the paper's number after fine-tuning goes beside the last round only
    assert summary["paper_start"].tolist() == [0.4, 0.4]
    assert summary["paper"].fillna(-1).tolist() == [-1, 0.9]
    plots.plot_curves(evaluation, tmp_path / "curves.png")
    _assert_png(tmp_path / "curves.png")


def _assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG"


def test_plot_curves_writes_png(tmp_path: Path) -> None:
    evaluation = tmp_path / "evaluation.csv"
    _evaluation_table().to_csv(evaluation, index=False)
    metrics = tmp_path / "metrics.csv"
    pd.DataFrame({"epoch": [1, 2], "samples_seen": [16, 32], "reward_mean": [0.1, 0.3]}).to_csv(
        metrics, index=False
    )
    plots.plot_curves(evaluation, tmp_path / "curves.png", {"d3po seed 0": metrics})
    _assert_png(tmp_path / "curves.png")


def _write_sample_dir(path: Path, prompts: list[str], colour: tuple[int, int, int]) -> Path:
    path.mkdir()
    rows = []
    for index, prompt in enumerate(prompts):
        Image.new("RGB", (16, 16), colour).save(path / f"{index}.png")
        rows.append(
            {"id": f"i{index}", "prompt": prompt, "group": index, "seed": 0, "path": f"{index}.png"}
        )
    pd.DataFrame(rows).to_csv(path / "manifest.csv", index=False)
    return path


def test_sample_grid_writes_png_and_upscales(tmp_path: Path) -> None:
    prompts = ["cat", "cat", "dog", "owl"]
    before = _write_sample_dir(tmp_path / "base", prompts, (255, 0, 0))
    after = _write_sample_dir(tmp_path / "d3po", prompts[:3], (0, 0, 255))
    plots.sample_grid(before, {"d3po": after}, tmp_path / "grid.png", max_prompts=2)
    _assert_png(tmp_path / "grid.png")
    upscaled = plots._upscaled(before / "0.png")
    assert upscaled.shape == (128, 128, 3) and (upscaled == [255, 0, 0]).all()


def test_results_table_start_end_over_seeds(tmp_path: Path) -> None:
    evaluation = tmp_path / "evaluation.csv"
    _evaluation_table().to_csv(evaluation, index=False)
    paper = {"jpeg": {"base": 107.0, "d3po": 285.0}}
    summary = tables.results_table([evaluation], tmp_path / "r.csv", tmp_path / "r.md", paper)
    written = pd.read_csv(tmp_path / "r.csv")
    assert len(written) == len(summary) == 4  # 2 methods x 2 proxies
    row = written[(written["method"] == "d3po") & (written["proxy"] == "jpeg")].iloc[0]
    # base: seeds 10, 11 -> 10.5 +- 0.5; d3po at its last epoch (2): 16, 17 -> 16.5 +- 0.5
    assert row["start_mean"] == pytest.approx(10.5) and row["start_std"] == pytest.approx(0.5)
    assert row["end_mean"] == pytest.approx(16.5) and row["end_std"] == pytest.approx(0.5)
    assert row["objective"] and row["seeds"] == 2 and row["paper"] == 285.0
    assert row["paper_start"] == 107.0
    row = written[(written["method"] == "ddpo") & (written["proxy"] == "aes")].iloc[0]
    assert row["end_mean"] == pytest.approx(7.5) and not row["objective"]
    assert np.isnan(row["paper"])
    first_rows = written.groupby("method").head(1)
    assert set(first_rows["proxy"]) == {"jpeg"}  # the objective comes first
    rows = _markdown_rows((tmp_path / "r.md").read_text())
    assert rows[0][:3] == ["objective", "method", "proxy"]
    columns = ["objective", "method", "proxy", "start (base)", "end", "seeds", "paper start"]
    shown = [dict(zip(rows[0], row, strict=True)) for row in rows[2:]]
    expected = ["jpeg", "d3po", "**jpeg**", "10.5 ± 0.5", "16.5 ± 0.5", "2", "107"]
    assert [shown[0][column] for column in columns] + [shown[0]["paper end"]] == [*expected, "285"]


def _one_seed_table(experiment: str = "compressibility") -> pd.DataFrame:
    """Base and one D3PO seed at two checkpoints, on the JPEG proxy (kB) and a toy rate."""
    rows = []
    for proxy, base in (("jpeg_compressibility", -0.8), ("toy_safe", 0.8)):
        rows.append(
            (experiment, "base", 0, 0, 0, proxy, base, 0.1, 72, base - 0.02, base + 0.02, None)
        )
        for epoch in (4, 8):
            value = base + 0.01 * epoch
            run = (experiment, "d3po", 0, epoch, 32 * epoch)
            rows.append((*run, proxy, value, 0.1, 72, value - 0.03, value + 0.05, None))
    return pd.DataFrame(rows, columns=tables.EVALUATION_COLUMNS[:12])


def test_curves_show_units_the_95_percent_intervals_and_the_experiment(tmp_path: Path) -> None:
    evaluation = tmp_path / "evaluation.csv"
    table = _one_seed_table()
    table.to_csv(evaluation, index=False)
    metrics = tmp_path / "metrics.csv"
    pd.DataFrame({"epoch": [1, 2], "samples_seen": [32, 64], "reward_mean": [-0.8, -0.79]}).to_csv(
        metrics, index=False
    )
    figure = plots.curves_figure(evaluation, {"d3po": metrics}, objective="jpeg_compressibility")
    jpeg, safe, training = [axis for axis in figure.axes if axis.get_visible()]
    assert "compressibility" in figure._suptitle.get_text()
    assert "(kB)" in jpeg.get_ylabel() and "(kB)" in training.get_ylabel()
    assert "(kB)" not in safe.get_ylabel()
    assert "images" in jpeg.get_xlabel()
    # the shaded band of the D3PO line is evaluation.csv's 95 % interval, from the base at 0
    band = jpeg.collections[-1].get_paths()[0].vertices
    rows = table[(table["proxy"] == "jpeg_compressibility")]
    assert band[:, 1].min() == pytest.approx(rows["ci_low"].min())
    assert band[:, 1].max() == pytest.approx(rows["ci_high"].max())
    assert set(np.round(band[:, 0])) == {0, 128, 256}


def test_an_objective_the_table_does_not_score_is_an_error_naming_it(tmp_path: Path) -> None:
    evaluation = tmp_path / "evaluation.csv"
    _one_seed_table().to_csv(evaluation, index=False)
    with pytest.raises(ConfigError, match="'jpeg_compresibility' is not .*: jpeg_compressibility"):
        plots.curves_figure(evaluation, objective="jpeg_compresibility")


def test_a_judged_run_draws_no_empty_training_panel(tmp_path: Path) -> None:
    evaluation = tmp_path / "evaluation.csv"
    _one_seed_table("safety_judged").to_csv(evaluation, index=False)
    metrics = tmp_path / "metrics.csv"  # a judged run trains on judgements: no reward
    pd.DataFrame({"epoch": [1, 2], "samples_seen": [32, 64], "reward_mean": [np.nan] * 2}).to_csv(
        metrics, index=False
    )
    figure = plots.curves_figure(evaluation, {"d3po": metrics}, objective="toy_safe")
    titles = [axis.get_title() for axis in figure.axes if axis.get_visible()]
    assert titles == ["held-out toy_safe", "held-out jpeg_compressibility"]  # objective first


def test_results_table_of_one_seed_shows_no_zero_spread(tmp_path: Path) -> None:
    evaluation = tmp_path / "evaluation.csv"
    _one_seed_table().to_csv(evaluation, index=False)
    tables.results_table([evaluation], tmp_path / "r.csv", tmp_path / "r.md")
    rows = _markdown_rows((tmp_path / "r.md").read_text())
    assert not any("±" in cell for row in rows for cell in row)
    assert rows[2][:5] == ["compressibility", "d3po", "jpeg_compressibility", "-0.8", "-0.72"]
    assert rows[2][rows[0].index("seeds")] == "1"
    foot = (tmp_path / "r.md").read_text().splitlines()[-1]
    assert foot.startswith("Tables written with commit") and f"torch {torch.__version__}" in foot


def _sample_set(folder: Path, seeds: list[int]) -> Path:
    """A sample set of white 16x16 PNGs (manifest + images), ids s0, s1, ..."""
    folder.mkdir(parents=True)
    rows = []
    for i, seed in enumerate(seeds):
        Image.new("RGB", (16, 16), "white").save(folder / f"s{i}.png")
        rows.append({"id": f"s{i}", "prompt": "a red circle", "group": i, "seed": seed})
    pd.DataFrame(rows).assign(path=[f"s{i}.png" for i in range(len(seeds))]).to_csv(
        folder / "manifest.csv", index=False
    )
    return folder


def test_checkpoints_are_compared_with_the_base_model_image_by_image(tmp_path: Path) -> None:
    base_values = [-0.80, -0.82, -0.79, -0.81, -0.80, -0.83]
    after_values = [value + 0.01 for value in base_values]  # every image 10 bytes smaller
    after_values[0] += 0.004
    sets = {}
    for name, seeds in (("base", range(6)), ("d3po", range(6)), ("other", range(10, 16))):
        sets[name] = _sample_set(tmp_path / name, list(seeds))
    scores = {
        "base": _write_scores(tmp_path / "base.csv", {"jpeg_compressibility": base_values}),
        "d3po": _write_scores(tmp_path / "d3po.csv", {"jpeg_compressibility": after_values}),
        "other": _write_scores(tmp_path / "other.csv", {"jpeg_compressibility": after_values}),
    }
    runs = [
        {"experiment": "c", "method": method, "seed": 0, "epoch": epoch, "samples_seen": epoch}
        | {"samples": str(sets[name])}
        for name, method, epoch in (("base", "base", 0), ("d3po", "d3po", 4), ("other", "x", 4))
    ]
    table = tables.collect_evaluation(list(scores.values()), runs, tmp_path / "evaluation.csv")
    row = table[table["method"] == "d3po"].iloc[0]
    differences = np.array(after_values) - np.array(base_values)
    assert row["delta"] == pytest.approx(differences.mean())
    assert row["delta_se"] == pytest.approx(differences.std(ddof=1) / np.sqrt(6))
    assert row["test"] == "paired-t" and row["p_value"] < 1e-4
    assert row["blank"] == pytest.approx(-0.631)  # a white 16x16 JPEG at quality 95
    assert np.isnan(table[table["method"] == "x"].iloc[0]["delta"])  # other noise: no pairs
    assert np.isnan(table[table["method"] == "base"].iloc[0]["delta"])


def test_the_blank_image_is_scored_with_the_proxys_configured_options(tmp_path: Path) -> None:
    samples = _sample_set(tmp_path / "base", [0, 1])
    scores = _write_scores(tmp_path / "base.csv", {"jpeg_compressibility": [-0.8, -0.8]})
    run = {"experiment": "c", "method": "base", "seed": 0, "epoch": 0, "samples_seen": 0}
    options = {"jpeg_compressibility": {"quality": 1}}  # a white JPEG: 630 bytes, not 631
    table = tables.collect_evaluation(
        [scores], [run | {"samples": str(samples)}], tmp_path / "evaluation.csv", options
    )
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "white").save(buffer, format="JPEG", quality=1)
    assert table["blank"].iloc[0] == pytest.approx(-len(buffer.getvalue()) / 1000)
    assert table["blank"].iloc[0] != pytest.approx(-0.631)  # not the default quality's floor


def test_the_results_table_reports_the_paired_change_and_the_content_change(tmp_path) -> None:
    rows = []
    for seed, delta in ((0, 0.05), (1, 0.07), (2, 0.06)):
        run = ("c", "d3po", seed, 8, 64, "jpeg_compressibility", -0.75, 0.01, 96, -0.76, -0.74)
        rows.append((*run, None, delta, 0.01, 0.001 * (seed + 1), "paired-t", -0.631))
        safe = 0.9 if seed else 0.5  # seed 0 loses safe images at epoch 8, significantly
        for epoch, p_value in ((4, 0.5), (8, 0.01)):
            run = ("c", "d3po", seed, epoch, 8 * epoch, "toy_safe", safe, 0.3, 96, 0.0, 1.0, None)
            rows.append((*run, safe - 0.8, 0.04, p_value if seed == 0 else 0.5, "mcnemar", None))
    rows.append(("c", "base", 0, 0, 0, "jpeg_compressibility", -0.811, 0.01, 96, -0.82, -0.8))
    rows[-1] = (*rows[-1], None, None, None, None, None, -0.631)
    rows.append(("c", "base", 0, 0, 0, "toy_safe", 0.8, 0.4, 96, 0.7, 0.9, *[None] * 6))
    evaluation = tmp_path / "evaluation.csv"
    pd.DataFrame(rows, columns=tables.EVALUATION_COLUMNS).to_csv(evaluation, index=False)
    objectives = {"c": "jpeg_compressibility"}
    summary = tables.results_table(
        [evaluation], tmp_path / "r.csv", tmp_path / "r.md", None, objectives
    )
    row = summary[summary["proxy"] == "jpeg_compressibility"].iloc[0]
    assert row["delta"] == pytest.approx(0.06)
    assert row["delta_se"] == pytest.approx(np.std([0.05, 0.07, 0.06], ddof=1) / np.sqrt(3))
    assert row["content_change"] == pytest.approx(0.06 / (-0.811 + 0.631))  # -33 % of content
    assert row["p_values"] == "0.001 0.002 0.003"
    markdown = (tmp_path / "r.md").read_text()
    shown = dict(zip(_markdown_rows(markdown)[0], _markdown_rows(markdown)[2], strict=True))
    assert shown["content change"] == "-33 %"
    assert shown["change, same noise"] == "0.06 ± 0.0058"
    effects = tables.side_effects(tables.read_evaluations(evaluation), objectives)
    assert effects["toy_safe"].tolist()[0] == 8 and effects["toy_safe"].isna().sum() == 2


def test_side_effects_list_each_run_once_and_only_runs_that_exist() -> None:
    """Experiments with other methods and budgets: no row for a method an experiment does not
    train, and one row per run (not one per budget of any experiment)."""
    rows = []
    for experiment, method, last in (("a", "d3po", 16), ("a", "ddpo", 16), ("b", "rw", 8)):
        for epoch in range(4, last + 1, 4):
            fell = experiment == "a" and method == "d3po" and epoch >= 12
            rows.append((experiment, method, 0, epoch, "toy_safe", -0.1, 0.01 if fell else 0.5))
    columns = ["experiment", "method", "seed", "epoch", "proxy", "delta", "p_value"]
    table = pd.DataFrame(rows, columns=columns).assign(test="mcnemar")
    effects = tables.side_effects(table, {"a": "jpeg_compressibility", "b": "jpeg_compressibility"})
    runs = list(zip(effects["experiment"], effects["method"], effects["last_epoch"], strict=True))
    assert runs == [("a", "d3po", 16), ("a", "ddpo", 16), ("b", "rw", 8)]
    assert effects["toy_safe"].iloc[0] == 12 and effects["toy_safe"].iloc[1:].isna().all()
