"""The shared training loop: items, exact micro-batching, learning signal, resume."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from d3po.config import SamplerSpec, TrainingSpec, TrainSettings
from d3po.methods.base import steps_per_unit
from d3po.train import Trainer, save_state, train

PROMPTS = ("a red circle", "a blue square", "a green triangle")


def settings(method="d3po", **training) -> TrainSettings:
    return TrainSettings(
        method=method,
        prompts=PROMPTS,
        objectives=("jpeg_compressibility",),
        sampler=SamplerSpec(num_steps=3, eta=1.0, guidance_scale=2.0, images_per_call=16),
        training=TrainingSpec(
            **{
                "epochs": 2,
                "checkpoint_every": 1,
                "prompts_per_epoch": 2,
                "images_per_prompt": 3,
                "units_per_step": 2,
                "micro_batch_size": 64,
                "learning_rate": 1e-3,
            }
            | training
        ),
    )


def lora_weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.pipe.unet.named_parameters() if "lora" in n}


@pytest.mark.parametrize("method", ["d3po", "ddpo"])
def test_micro_batching_is_exact(method):
    """One optimizer step accumulates the same gradient whatever the micro-batch size.

    Plain SGD with lr 1 makes the adapter's change equal to minus the gradient (Adam would
    hide a wrong scale), and one step over all units makes it the whole epoch's gradient.
    """
    changes = []
    for micro_batch_size in (64, 5):
        trainer = Trainer(settings(method, micro_batch_size=micro_batch_size, units_per_step=100))
        trainer.optimizer = torch.optim.SGD(trainer.parameters, lr=1.0)
        before = lora_weights(trainer)
        trainer.run_epoch()
        changes.append({n: w - before[n] for n, w in lora_weights(trainer).items()})
    assert any(change.abs().max() > 0 for change in changes[0].values())
    for name, change in changes[0].items():
        scale = change.abs().max().item()
        torch.testing.assert_close(changes[1][name], change, rtol=0, atol=1e-3 * scale + 1e-12)


@pytest.mark.parametrize(
    ("fraction", "steps", "expected"),
    [(0.14, 50, 7), (0.28, 50, 14), (0.56, 50, 28), (0.67, 3, 3), (0.01, 10, 1), (1.0, 20, 20)],
)
def test_steps_per_unit_is_the_ceiling_of_the_fraction_not_of_its_rounding(
    fraction, steps, expected
):
    assert steps_per_unit(fraction, steps) == expected


def test_d3po_items_are_all_pairs_times_trained_steps():
    trainer = Trainer(settings(timestep_fraction=0.67))
    row = trainer.run_epoch()
    # 2 prompts x 3 images -> at most 2 x 3 pairs; JPEG sizes rarely tie, so 6 here
    assert row["units"] == 6
    assert 0.0 <= row["clip_fraction"] <= 1.0
    assert row["loss"] == pytest.approx(0.6931, abs=1e-3)  # log 2: policy == reference at start


def test_both_methods_move_the_adapter_and_log_their_metrics():
    for method in ("d3po", "ddpo"):
        trainer = Trainer(settings(method))
        before = lora_weights(trainer)
        row = trainer.run_epoch()
        after = lora_weights(trainer)
        assert any(not torch.equal(before[n], after[n]) for n in before)
        for column in ("samples_seen", "reward_mean", "reward_std", "loss", "clip_fraction"):
            assert column in row
        assert row["samples_seen"] == 6


@pytest.mark.parametrize("method", ["ddpo", "dpok", "reward_weighted"])
def test_reward_methods_refuse_several_objectives(method):
    with pytest.raises(ValueError, match=f"{method} needs one scalar reward"):
        replace(settings(method), objectives=("jpeg_compressibility", "jpeg_incompressibility"))


def preempted(run_settings: TrainSettings, state_dir, epochs: int) -> None:
    """The state a run killed after ``epochs`` epochs leaves behind (nothing published)."""
    trainer = Trainer(run_settings)
    for _ in range(epochs):
        trainer.run_epoch()
        save_state(trainer, state_dir)  # checkpoint_every is 1


def without_timings(metrics: pd.DataFrame) -> pd.DataFrame:
    """The figures of a metrics table that are results (not the seconds of its phases)."""
    return metrics.drop(columns=[c for c in metrics.columns if c.endswith("seconds")])


def published(run_dir) -> tuple[pd.DataFrame, list[str]]:
    metrics = without_timings(pd.read_csv(run_dir / "metrics.csv"))
    return metrics, sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def test_resumed_run_matches_the_uninterrupted_one(tmp_path, capsys):
    full = train(settings(epochs=3), tmp_path / "full", tmp_path / "full-state")
    preempted(settings(epochs=3), tmp_path / "part-state", epochs=2)
    train(settings(epochs=3), tmp_path / "part", tmp_path / "part-state")  # rerun resumes
    assert "resumed from" in capsys.readouterr().out
    pd.testing.assert_frame_equal(published(tmp_path / "part")[0], published(tmp_path / "full")[0])
    assert len(full.metrics) == 3
    assert published(tmp_path / "part")[1] == ["epoch_0001", "epoch_0002", "epoch_0003"]
    made_with = tmp_path / "part" / "checkpoints" / "epoch_0003" / "provenance.json"
    assert json.loads(made_with.read_text())["torch"] == torch.__version__


def test_a_smaller_micro_batch_resumes_the_run(tmp_path, capsys):
    """Micro-batching is exact, so lowering it (out of GPU memory) keeps the saved state."""
    preempted(settings(epochs=2), tmp_path / "state", epochs=1)
    train(settings(epochs=2, micro_batch_size=4), tmp_path / "run", tmp_path / "state")
    assert "resumed from" in capsys.readouterr().out


def test_state_from_other_settings_is_refused_and_kept(tmp_path):
    preempted(settings(epochs=2), tmp_path / "state", epochs=1)
    saved = (tmp_path / "state" / "latest" / "settings.json").read_text()
    with pytest.raises(RuntimeError, match="other settings"):
        train(settings(epochs=2, learning_rate=5e-4), tmp_path / "run", tmp_path / "state")
    assert (tmp_path / "state" / "latest" / "settings.json").read_text() == saved


def test_a_finished_run_leaves_no_state_behind(tmp_path):
    """Snakemake reruns a finished run when its settings change: the rerun starts afresh."""
    train(settings(epochs=1), tmp_path / "run", tmp_path / "state")
    assert not (tmp_path / "state").exists()
    train(settings(epochs=1, learning_rate=5e-4), tmp_path / "run", tmp_path / "state")
    assert published(tmp_path / "run")[1] == ["epoch_0001"]


def test_fewer_epochs_publish_the_shorter_run(tmp_path):
    train(settings(epochs=2), tmp_path / "run", tmp_path / "state")
    train(settings(epochs=1), tmp_path / "run", tmp_path / "state")
    metrics, checkpoints = published(tmp_path / "run")
    assert checkpoints == ["epoch_0001"]
    assert metrics["epoch"].tolist() == [1]


def test_a_state_past_the_asked_epochs_is_refused(tmp_path):
    preempted(settings(epochs=3), tmp_path / "state", epochs=2)
    with pytest.raises(RuntimeError, match="past training.epochs=1"):
        train(settings(epochs=1), tmp_path / "run", tmp_path / "state")
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_a_truncated_metrics_table_in_the_state_is_refused(tmp_path):
    preempted(settings(epochs=3), tmp_path / "state", epochs=2)
    metrics = tmp_path / "state" / "latest" / "metrics.csv"
    metrics.write_text("\n".join(metrics.read_text().splitlines()[:2]) + "\n")  # header + 1 row
    with pytest.raises(RuntimeError, match="truncated"):
        train(settings(epochs=3), tmp_path / "run", tmp_path / "state")


def test_mixed_precision_without_cuda_warns_and_runs_in_float32():
    from d3po.train import make_accelerator

    with pytest.warns(UserWarning, match="needs a CUDA GPU"):
        accelerator = make_accelerator("bf16")
    assert accelerator.mixed_precision == "no"


def test_an_epoch_of_ties_trains_nothing_and_goes_on(monkeypatch):
    trainer = Trainer(settings("d3po"))
    monkeypatch.setattr(trainer, "score", lambda trajectories: np.zeros((6, 1)))
    before = lora_weights(trainer)
    row = trainer.run_epoch()
    assert row["units"] == 0
    assert all(torch.equal(before[n], w) for n, w in lora_weights(trainer).items())


@pytest.mark.parametrize("method", ["ddpo", "dpok"])
@pytest.mark.parametrize("micro_batch_size", [1, 5])
def test_the_ppo_ratio_starts_at_exactly_one(monkeypatch, method, micro_batch_size):
    """pi_old is the training forward's own log-prob before the first step, bit for bit (the
    log-probs recorded while sampling come from other batches: at micro-batch 1 they differ on
    the CPU, and on a GPU in bf16 by more than the 1e-4 clip)."""
    import d3po.methods.ddpo
    import d3po.methods.dpok

    calls, ppo_clip_loss = [], d3po.methods.ddpo.ppo_clip_loss

    def recording(log_prob, old_log_prob, advantages, clip_range):
        loss, diagnostics = ppo_clip_loss(log_prob, old_log_prob, advantages, clip_range)
        calls.append((log_prob.detach().clone(), old_log_prob.clone(), diagnostics))
        return loss, diagnostics

    monkeypatch.setattr(f"d3po.methods.{method}.ppo_clip_loss", recording)
    trainer = Trainer(settings(method, micro_batch_size=micro_batch_size))
    trainer.run_epoch()
    log_prob, old_log_prob, diagnostics = calls[0]  # the first micro-batch, before any step
    assert torch.equal(log_prob, old_log_prob)
    assert diagnostics["log_ratio"] == 0 and diagnostics["clip_fraction"] == 0
    assert len(calls) > 1 and not torch.equal(*calls[-1][:2])  # later steps see a moved policy


def test_the_reference_pass_is_batched_like_sampling():
    """sampler.images_per_call images of one step per UNet call, whatever the micro-batch, with the
    numbers of an item-by-item pass."""
    trainer = Trainer(settings(micro_batch_size=1, images_per_prompt=3, prompts_per_epoch=3))
    trajectories = trainer.sample_share(1)  # 9 images, 3 steps
    calls = []
    hook = trainer.pipe.unet.register_forward_pre_hook(lambda _, args: calls.append(len(args[0])))
    batched = trainer.reference_log_probs(trajectories)  # sampler.images_per_call 16
    trainer.settings = replace(
        trainer.settings, sampler=replace(trainer.settings.sampler, images_per_call=4)
    )
    in_fours = trainer.reference_log_probs(trajectories)
    hook.remove()
    assert calls == [2 * 9] * 3 + [2 * 4, 2 * 4, 2 * 1] * 3  # with guidance: 2 items an image
    policy = trainer.policy(trajectories)
    one_by_one = torch.tensor(
        [
            [
                policy.reference_step(torch.tensor([i]), torch.tensor([t])).log_prob.item()
                for t in range(3)
            ]
            for i in range(9)
        ]
    )
    torch.testing.assert_close(batched, one_by_one, rtol=0, atol=1e-5)
    torch.testing.assert_close(in_fours, one_by_one, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "method, timed, untimed",
    [("d3po", "reference", "old_log_probs"), ("ddpo", "old_log_probs", "reference")],
)
def test_metrics_time_each_phase(method, timed, untimed):
    row = Trainer(settings(method)).run_epoch()
    phases = [f"{phase}_seconds" for phase in ("sampling", "scoring", timed, "update")]
    assert all(row[phase] > 0 for phase in phases)
    assert row[f"{untimed}_seconds"] == 0
    assert sum(row[phase] for phase in phases) <= row["seconds"]


@pytest.mark.slow
def test_regional_compilation_keeps_the_log_probs_and_the_update():
    """The UNet's repeated blocks compiled in place (as `d3po benchmark --compile` does): the
    same sampling, log-probs (policy and reference) and SGD step within float32 rounding.
    The "aot_eager" backend runs the compiled path's graph capture and autograd; inductor, the
    default, adds code generation and takes about 5 minutes on 2 CPU cores (same figures)."""
    plain, compiled = (Trainer(settings("ddpo", micro_batch_size=5)) for _ in range(2))
    compiled.pipe.unet.compile_repeated_blocks(backend="aot_eager")
    for trainer in (plain, compiled):
        trainer.optimizer = torch.optim.SGD(trainer.parameters, lr=1.0)
    trajectories = plain.sample_share(1)
    torch.testing.assert_close(compiled.sample_share(1).latents, trajectories.latents)
    images, steps = torch.arange(6).repeat(3), torch.arange(3).repeat_interleave(6)

    @torch.no_grad()
    def log_probs(trainer: Trainer) -> torch.Tensor:
        policy = trainer.policy(trajectories)
        reference = policy.reference_step(images, steps).log_prob
        return torch.stack([policy.log_prob(images, steps), reference])

    torch.testing.assert_close(log_probs(compiled), log_probs(plain), rtol=0, atol=1e-5)
    before = lora_weights(plain)
    plain.run_epoch(), compiled.run_epoch()
    after_plain, after_compiled = lora_weights(plain), lora_weights(compiled)
    for name, weight in after_plain.items():
        scale = (weight - before[name]).abs().max().item()
        torch.testing.assert_close(after_compiled[name], weight, rtol=0, atol=1e-3 * scale + 1e-12)
