"""A human-feedback round: sample with trajectories, judge, train D3PO on exactly those pairs."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from d3po.config import SamplerSpec, SampleSettings, TrainingSpec, TrainSettings
from d3po.feedback import judging_progress, load_labelled, load_scored
from d3po.models import ModelSpec
from d3po.preferences import append_judgements
from d3po.sample_checkpoints import write_samples
from d3po.train import Trainer, train

SAMPLER = SamplerSpec(num_steps=3, eta=1.0, guidance_scale=2.0, images_per_call=16)
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
            append_judgements(judgements, [judgement])
    return samples, judgements


def settings(method="d3po", epochs=3) -> TrainSettings:
    return TrainSettings(
        method=method,
        prompts=PROMPTS,
        objectives=("jpeg_compressibility",),
        sampler=SAMPLER,
        training=TrainingSpec(
            epochs=epochs, checkpoint_every=1, units_per_step=4, learning_rate=3e-3
        ),
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
        policy = trainer.policy(trajectories).log_prob
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
    with pytest.raises(ValueError, match="does not train on human judgements"):
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
    from d3po.sample_sets import read_set_images

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
    images = read_set_images(samples, manifest)
    safe = dict(zip(manifest["id"], toy_safe(images, list(manifest["prompt"])), strict=True))
    assert {"a", "b", "tie"} & set(judgements["winner"]) - {"tie"}  # some pairs are decided
    for row in judgements.itertuples():
        expected = "tie" if safe[row.a] == safe[row.b] else ("a" if safe[row.a] else "b")
        assert row.winner == expected


def test_a_set_sampled_with_another_sampler_is_refused(judged_set):
    samples, judgements = judged_set
    other = SamplerSpec(num_steps=3, eta=1.0, guidance_scale=5.0, images_per_call=16)
    with pytest.raises(
        ValueError, match=r"sampler\.json: .*guidance_scale=2\.0 but training uses 5\.0"
    ):
        load_labelled(samples, judgements, sampler=other)
    load_labelled(samples, judgements, sampler=SAMPLER)  # the same sampler (images_per_call aside)
    (samples / "sampler.json").unlink()
    with pytest.raises(FileNotFoundError, match="sampler.json is missing"):
        load_labelled(samples, judgements, sampler=SAMPLER)


def test_proxy_scores_give_pairs_within_each_group_ties_skipped(judged_set, tmp_path):
    samples, _ = judged_set
    manifest = pd.read_csv(samples / "manifest.csv", dtype={"id": str})
    # group 0: 3 > 1 = 1 (one tie); group 1: 5 > 4 > 0, and 5 > any score of group 0
    values = [3.0, 1.0, 1.0, 0.0, 5.0, 4.0]
    scores = tmp_path / "brightness.csv"
    pd.DataFrame({"id": manifest["id"], "proxy": "brightness", "value": values}).to_csv(
        scores, index=False
    )
    labelled = load_scored(samples, [("brightness", scores)], sampler=SAMPLER)
    assert sorted(map(tuple, labelled.pairs.tolist())) == [(0, 1), (0, 2), (4, 3), (4, 5), (5, 3)]


def test_a_bad_score_table_stops_a_proxy_scored_round(judged_set, tmp_path):
    samples, _ = judged_set
    scores = tmp_path / "brightness.csv"
    scores.write_text("id,proxy,value\n0000_00,brightness,1\n")
    with pytest.raises(ValueError, match="brightness.csv: 5 image"):
        load_scored(samples, [("brightness", scores)])


def test_judging_progress_counts_prompts_with_enough_annotators(judged_set, tmp_path):
    samples, judgements = judged_set  # "ann" judged both prompts
    assert judging_progress(samples, judgements, 1) == (0, 2)
    assert judging_progress(samples, judgements, 2) == (2, 2)
    append_judgements(
        judgements,
        [
            {
                "prompt": "a red circle",
                "a": "0000_00",
                "b": "0000_01",
                "winner": "a",
                "annotator": "bob",
                "time": "2026-11-28T13:00:00",
            }
        ],
    )
    assert judging_progress(samples, judgements, 2) == (1, 2)
    assert judging_progress(samples, tmp_path / "nobody.jsonl", 1) == (2, 2)


def test_a_later_round_starts_from_the_earlier_adapter_as_its_reference(judged_set, tmp_path):
    """Round 2 samples with round 1's adapter and trains on from it: at its start the policy is
    the policy that sampled the set, so the preference margin against the reference is zero."""
    samples, judgements = judged_set
    train(
        settings(epochs=2),
        tmp_path / "round1",
        tmp_path / "state1",
        load_labelled(samples, judgements),
    )
    adapter = tmp_path / "round1" / "checkpoints" / "epoch_0002"
    round2 = tmp_path / "round2_samples"
    write_samples(
        SampleSettings(prompts=PROMPTS, images_per_prompt=3, seed=8, sampler=SAMPLER),
        round2,
        adapter=adapter,
        keep_trajectories=True,
    )
    labelled = load_labelled(round2, judgements, SAMPLER, "mean")
    trainer = Trainer(settings(), labelled=labelled, init_adapter=adapter)
    assert preference_margin(trainer) == pytest.approx(0.0, abs=1e-5)
    for _ in range(2):
        trainer.run_epoch()
    assert preference_margin(trainer) > 1e-4
