"""Human feedback rounds: sample a set with its trajectories, let people judge, train on it.

The paper's human-feedback experiments (fewer deformed hands, safer images) repeat:
(1) ``d3po sample --trajectories`` writes images, their manifest and every latent of every
step; (2) people compare pairs of images of one prompt and their judgements are appended to a
JSON Lines file (``d3po.preferences``: one line per judgement, several annotators are
majority-voted); (3) ``d3po train --samples DIR --judgements FILE`` trains D3PO on exactly
those pairs, with the recorded steps as actions, for ``training.epochs`` passes.

A proxy-scored round replaces (2) by a proxy's score table of the set (``load_scored``): pairs
from the score order, within a group only, ties skipped, Pareto for several proxies. Rounds
repeat: round r's set is sampled by round r-1's final adapter (docs/design.md).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from d3po.config import SamplerSpec
from d3po.errors import InputFileError
from d3po.labelling.assign import prompts_left
from d3po.preferences import judgements_to_pairs, preference_pairs, read_judgements, timestamp
from d3po.sample_sets import (
    SAMPLER_RECORD,
    read_manifest,
    read_sampler_record,
    read_set_images,
    read_trajectories,
)
from d3po.sampling import Trajectories
from d3po.scores import read_scores


@dataclass
class LabelledSamples:
    """A sample set with the preference pairs people gave on it."""

    trajectories: Trajectories
    pairs: torch.Tensor  # (P, 2) sample indices: winner, loser

    def fingerprint(self) -> list[list[int]]:
        """What a resumed run must find again: the same judged pairs."""
        return self.pairs.tolist()


def load_labelled(
    samples_dir: Path,
    judgements_path: Path,
    sampler: SamplerSpec | None = None,
    reduction: str | None = None,
) -> LabelledSamples:
    """Read a sample set's trajectories and the judgements on its images, as pairs.

    With ``sampler`` (and ``reduction``), the set must have been sampled by that sampler
    (:func:`check_sampler`).
    """
    manifest, ids, trajectories = _judged_set(samples_dir, sampler, reduction)
    judgements = read_judgements(Path(judgements_path), manifest=manifest)
    pairs = torch.as_tensor(judgements_to_pairs(judgements, ids))  # (P, 2) int64
    if len(pairs) == 0:
        raise InputFileError(
            f"{judgements_path}: no judgement with a winner (only ties, or no lines): "
            "nothing to train on"
        )
    return LabelledSamples(trajectories, pairs)


def load_scored(
    samples_dir: Path,
    score_tables: Sequence[tuple[str, Path]],
    sampler: SamplerSpec | None = None,
    reduction: str | None = None,
) -> LabelledSamples:
    """A proxy-scored round: pairs of a set from its score tables ``[(proxy, csv), ...]``.

    Within each group (one prompt, one initial noise) image i is preferred to j when its
    scores Pareto-dominate j's; ties and incomparable pairs are skipped. Every table is
    checked (d3po.scores.read_scores) against the set's manifest.
    """
    if not score_tables:
        raise InputFileError("a proxy-scored round needs at least one score table")
    _, ids, trajectories = _judged_set(samples_dir, sampler, reduction)
    columns = []
    for proxy, path in score_tables:
        table = read_scores(Path(path), proxy, ids).set_index("id")
        columns.append(table.loc[ids, "value"].to_numpy())
    pairs = preference_pairs(trajectories.groups.numpy(), np.stack(columns, axis=1))
    if len(pairs) == 0:
        raise InputFileError(
            f"{', '.join(str(path) for _, path in score_tables)}: every pair of images of the "
            "same prompt ties: nothing to train on"
        )
    return LabelledSamples(trajectories, torch.as_tensor(pairs))


def _judged_set(
    samples_dir: Path, sampler: SamplerSpec | None, reduction: str | None
) -> tuple[pd.DataFrame, list[str], Trajectories]:
    """The set's manifest, image ids (manifest order) and trajectories, checked against each
    other."""
    manifest = read_manifest(samples_dir)
    if sampler is not None:
        check_sampler(samples_dir, sampler, reduction)
    trajectories = read_trajectories(samples_dir, manifest)
    return manifest, [str(i) for i in manifest["id"]], trajectories


def check_sampler(samples_dir: Path, sampler: SamplerSpec, reduction: str | None = None) -> None:
    """Refuse to train on a set sampled by another sampler than the training run's.

    D3PO's log-probabilities of the recorded steps are only those of the sampling policy when
    the steps, eta and guidance scale are the same. ``reduction``, when given, must match the
    reduction of the log-probs kept in the set (a later round's reference policy).
    """
    path = Path(samples_dir) / SAMPLER_RECORD
    record = read_sampler_record(samples_dir)
    recorded = record.get("sampler", {})
    for field in ("num_steps", "eta", "guidance_scale"):
        if recorded.get(field) != getattr(sampler, field):
            raise InputFileError(
                f"{path}: the set was sampled with sampler.{field}={recorded.get(field)} but "
                f"training uses {getattr(sampler, field)}; train with the sampler that made "
                "the set, or sample it again"
            )
    if reduction is not None and record.get("log_prob_reduction") != reduction:
        raise InputFileError(
            f"{path}: the set's log-probs are reduced by {record.get('log_prob_reduction')!r} "
            f"but training.log_prob_reduction is {reduction!r}; a later round uses them as "
            "its reference policy, so the two must match"
        )


def judging_progress(
    samples_dir: Path, judgements_path: Path, annotators_per_prompt: int
) -> tuple[int, int]:
    """(prompts still to judge, prompts in the set) for a people's judgements record.

    The labelling app's own count (``labelling.assign.prompts_left``): a prompt is judged once
    ``annotators_per_prompt`` different annotators decided it (undone decisions and skips do
    not count). A missing record judges nothing.
    """
    total = read_manifest(samples_dir)["group"].nunique()
    return prompts_left(samples_dir, judgements_path, annotators_per_prompt), total


def simulate_judgements(
    samples_dir: Path, criterion: str, out: Path, annotator: str = "simulated"
) -> int:
    """The toy world's simulated annotator judges every pair of images of each prompt.

    Writes the same JSON Lines a person's labelling produces (ties included), appending to
    ``out``; returns the number of judgements written.
    """
    from d3po.judges import simulated_annotator
    from d3po.preferences import append_judgements

    manifest = read_manifest(samples_dir)
    images = read_set_images(samples_dir, manifest)
    pairs = [
        pair
        for _, group in manifest.groupby("group", sort=True)
        for pair in itertools.combinations(group.index, 2)
    ]
    first, second = [a for a, _ in pairs], [b for _, b in pairs]
    prompts = [str(manifest["prompt"][a]) for a in first]
    winners = simulated_annotator(images[first], images[second], prompts, criterion)
    now = timestamp()
    judgements = [
        {
            "prompt": prompt,
            "a": str(manifest["id"][a]),
            "b": str(manifest["id"][b]),
            "winner": str(winner),
            "annotator": annotator,
            "time": now,
        }
        for a, b, prompt, winner in zip(first, second, prompts, winners, strict=True)
    ]
    append_judgements(out, judgements)  # one write: a failed check appends nothing
    return len(judgements)
