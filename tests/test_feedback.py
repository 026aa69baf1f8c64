"""A human-feedback round: sample with trajectories, judge, train D3PO on exactly those pairs."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from d3po.config import SamplerSpec, SampleSettings, TrainingSpec, TrainSettings
from d3po.evaluate import write_samples
from d3po.feedback import load_labelled
from d3po.models import ModelSpec
from d3po.preferences import append_judgement
from d3po.train import Trainer, train

SAMPLER = SamplerSpec(num_steps=3, eta=1.0, guidance_scale=2.0, batch_size=16)
PROMPTS = ("a red circle", "a blue square")


@pytest.fixture
def judged_set(tmp_path):
    """Two prompts x 3 images; the annotator prefers image 0 of each prompt to the others."""
    samples = tmp_path / "samples"
    manifest = write_samples(
        SampleSettings(prompts=PROMPTS, images_per_prompt=3, seed=7, sampler=SAMPLER),
        samples,
        keep_trajectories=True,
    )
    judgements = tmp_path / "labels.jsonl"
    for _, group in manifest.groupby("group"):
        ids = list(group["id"])
        for loser in ids[1:]:
            judgement = {
                "prompt": group["prompt"].iloc[0],
                "a": loser,
                "b": ids[0],
                "winner": "b",
                "annotator": "ann",
                "time": "2026-11-28T12:00:00",
            }
            append_judgement(judgements, judgement)
    return samples, judgements


def settings(method="d3po", epochs=3) -> TrainSettings:
    return TrainSettings(
        method=method,
        prompts=PROMPTS,
        objectives=("jpeg_compressibility",),
        sampler=SAMPLER,
        training=TrainingSpec(epochs=epochs, checkpoint_every=1, batch_size=4, learning_rate=3e-3),
    )


def preference_margin(trainer: Trainer) -> float:
    """Mean over judged (pair, step): [log pi(w) - log pi_ref(w)] - [log pi(l) - log pi_ref(l)]."""
    trajectories = trainer.judged_samples()
    pairs = trainer.labelled.pairs
    steps = trajectories.num_steps
    winner = pairs[:, 0].repeat_interleave(steps)
    loser = pairs[:, 1].repeat_interleave(steps)
    step = torch.arange(steps).repeat(len(pairs))
    with torch.no_grad():
        policy = trainer.log_prob_fn(trajectories)
        reference = trajectories.reference_log_probs.cpu()
        margin = (policy(winner, step).cpu() - reference[winner, step]) - (
            policy(loser, step).cpu() - reference[loser, step]
        )
    return float(margin.mean())


def test_judged_pairs_are_read_from_the_labels(judged_set):
    samples, judgements = judged_set
    labelled = load_labelled(samples, judgements)
    assert len(labelled.pairs) == 4  # 2 prompts x 2 losers
    assert set(labelled.pairs[:, 0].tolist()) == {0, 3}  # image 0 of each prompt wins
    assert labelled.trajectories.latents.shape[:2] == (6, SAMPLER.num_steps + 1)


def test_training_on_judgements_raises_the_preferred_images_likelihood(judged_set, tmp_path):
    labelled = load_labelled(*judged_set)
    trainer = Trainer(settings(), labelled=labelled)
    assert preference_margin(trainer) == pytest.approx(0.0, abs=1e-6)  # adapter starts at zero
    for _ in range(3):
        row = trainer.run_epoch()
    assert row["units"] == 4
    assert preference_margin(trainer) > 1e-4


def test_a_judged_run_writes_its_outputs_and_resumes(judged_set, tmp_path):
    train(settings(epochs=2), tmp_path / "run", tmp_path / "state", load_labelled(*judged_set))
    train(settings(epochs=3), tmp_path / "run", tmp_path / "state", load_labelled(*judged_set))
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2, 3]


def test_judgements_cannot_train_ddpo(judged_set):
    with pytest.raises(ValueError, match="D3PO only"):
        Trainer(settings("ddpo"), labelled=load_labelled(*judged_set))


def test_a_set_without_trajectories_says_how_to_make_one(judged_set):
    samples, judgements = judged_set
    (samples / "trajectories.pt").unlink()
    with pytest.raises(FileNotFoundError, match="--trajectories"):
        load_labelled(samples, judgements)


def test_a_bad_judgements_file_is_a_user_error_naming_its_line(judged_set, tmp_path):
    from d3po.errors import UserError

    samples, _ = judged_set
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a red circle", "a": "0000_00"}\n')
    with pytest.raises(UserError, match="bad.jsonl"):
        load_labelled(samples, bad)
    with pytest.raises(UserError, match="not found"):
        load_labelled(samples, tmp_path / "absent.jsonl")


def test_the_simulated_annotator_writes_judgements_the_judges_agree_with(tmp_path):
    from d3po.feedback import simulate_judgements
    from d3po.judges import toy_safe
    from d3po.preferences import read_judgements
    from d3po.rewards import load_images

    samples = tmp_path / "toy"
    write_samples(
        SampleSettings(
            prompts=("a red circle", "a blue square", "a green cross"),
            images_per_prompt=4,
            seed=3,
            model=ModelSpec(source="toy"),
            sampler=SamplerSpec(num_steps=10, guidance_scale=3.0),
        ),
        samples,
        keep_trajectories=True,
    )
    labels = tmp_path / "labels.jsonl"
    assert simulate_judgements(samples, "safe", labels) == 3 * 6  # every pair of each prompt
    judgements = read_judgements(labels)
    manifest = pd.read_csv(samples / "manifest.csv", dtype={"id": str})
    images = load_images([samples / path for path in manifest["path"]])
    safe = dict(zip(manifest["id"], toy_safe(images, list(manifest["prompt"])), strict=True))
    assert {"a", "b", "tie"} & set(judgements["winner"]) - {"tie"}  # some pairs are decided
    for row in judgements.itertuples():
        expected = "tie" if safe[row.a] == safe[row.b] else ("a" if safe[row.a] else "b")
        assert row.winner == expected
