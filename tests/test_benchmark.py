"""`d3po benchmark`: epochs of the training loop itself, its phases, FLOPs and JSON record."""

from __future__ import annotations

import json

import pytest
import torch

from d3po import benchmark


def test_the_benchmark_times_the_loop_and_writes_its_record(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    arguments = ["--steps", "2", "--prompts", "2", "--epochs", "1", "--micro-batch", "4"]
    figures = benchmark.main(arguments)
    (written,) = (tmp_path / "benchmarks").iterdir()
    assert written.name == f"{figures['date'][:10]}-tiny-random-cpu.json"
    record = json.loads(written.read_text())
    assert record["command"] == "d3po benchmark " + " ".join(arguments)
    assert record["flags"]["micro_batch"] == 4 and record["commit"]
    assert record["environment"]["torch"] == torch.__version__ and record["environment"]["cpu"]
    assert record["device"] == "cpu" and record["device_name"].startswith("cpu")
    for phase in ("sampling", "scoring", "reference", "update"):  # the loop's metrics columns
        assert record[f"{phase}_s"] > 0
    assert record["old_log_probs_s"] == 0  # D3PO's ratio is to the reference model
    assert record["tflop_per_epoch"]["update"] == pytest.approx(
        3 * 2 * record["tflop_per_epoch"]["sampling"] * record["pairs_per_epoch"] / 4
    )  # 4 images; a pair's two images are trained forward and backward at every step
    assert record["tflops"]["epoch"] > 0
    assert record["peak_tflops"] is None and "no known peak" in record["peak_source"]


def test_unet_items_of_an_epoch():
    settings = benchmark.benchmark_settings(benchmark.build_parser().parse_args([]))
    items = benchmark.epoch_unet_items(settings, images=16, pairs=8)
    assert items == {"sampling": 640, "reference": 640, "update": 3 * 8 * 20 * 2 * 2}


def test_the_unet_flops_of_an_item_are_counted(tiny_pipe):
    """Counted, not assumed: twice the items, twice the FLOPs; conv and matmul FLOPs > 0."""
    from torch.utils.flop_counter import FlopCounterMode

    from d3po.sampling import latent_shape

    one = benchmark.unet_flops_per_item(tiny_pipe)
    latents = torch.zeros(2, *latent_shape(tiny_pipe))
    embeds, _ = tiny_pipe.encode_prompt(["a red circle", "a blue square"], "cpu", 1, False)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        tiny_pipe.unet(latents, torch.tensor([500, 500]), embeds)
    assert one > 0 and counter.get_total_flops() == pytest.approx(2 * one, rel=1e-6)


@pytest.mark.parametrize(
    "name, precision, peak",
    [("NVIDIA H200", "bf16", 790.0), ("NVIDIA H200", "no", None), ("Some GPU", "bf16", None)],
)
def test_the_peak_is_known_only_where_it_is(monkeypatch, name, precision, peak):
    monkeypatch.setattr(benchmark, "device_name", lambda device: name)
    found, source = benchmark.device_peak(torch.device("cuda"), precision)
    assert found == peak
    assert (peak is None) == ("no known peak" in source)
