"""Human feedback rounds: sample a set with its trajectories, let people judge, train on it.

The paper's human-feedback experiments (fewer deformed hands, safer images) repeat:
(1) ``d3po sample --trajectories`` writes images, their manifest and every latent of every
step; (2) people compare pairs of images of one prompt and their judgements are appended to a
JSON Lines file (``d3po.preferences``: one line per judgement, several annotators are
majority-voted); (3) ``d3po train --samples DIR --judgements FILE`` trains D3PO on exactly
those pairs, with the recorded steps as actions, for ``training.epochs`` passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from d3po.errors import InputFileError, MissingFileError, UserError
from d3po.preferences import judgements_to_pairs, read_judgements
from d3po.rewards import read_manifest
from d3po.sampling import Trajectories, load_trajectories


@dataclass
class LabelledSamples:
    """A sample set with the preference pairs people gave on it."""

    trajectories: Trajectories
    pairs: torch.Tensor  # (P, 2) sample indices: winner, loser

    def fingerprint(self) -> list[list[int]]:
        """What a resumed run must find again: the same judged pairs."""
        return self.pairs.tolist()


def load_labelled(samples_dir: Path, judgements_path: Path) -> LabelledSamples:
    """Read a sample set's trajectories and the judgements on its images, as pairs."""
    manifest = read_manifest(samples_dir)
    ids = [str(i) for i in manifest["id"]]
    trajectories = load_trajectories(Path(samples_dir) / "trajectories.pt")
    if len(trajectories.prompts) != len(ids):
        raise InputFileError(
            f"{samples_dir}: manifest.csv lists {len(ids)} images but trajectories.pt holds "
            f"{len(trajectories.prompts)}; sample the set again with --trajectories"
        )
    if not Path(judgements_path).is_file():
        raise MissingFileError(f"judgements file not found: {judgements_path}")
    try:
        judgements = read_judgements(Path(judgements_path), known_ids=set(ids))
    except UserError:
        raise
    except ValueError as error:  # it names the file, line and field: an error the user fixes
        raise InputFileError(str(error)) from error
    pairs = torch.as_tensor(judgements_to_pairs(judgements, ids)).long().reshape(-1, 2)
    if len(pairs) == 0:
        raise InputFileError(
            f"{judgements_path}: no judgement with a winner (only ties, or no lines): "
            "nothing to train on"
        )
    return LabelledSamples(trajectories, pairs)


def simulate_judgements(
    samples_dir: Path, criterion: str, out: Path, annotator: str = "simulated"
) -> int:
    """The toy world's simulated annotator judges every pair of images of each prompt.

    Writes the same JSON Lines a person's labelling produces (ties included), appending to
    ``out``; returns the number of judgements written.
    """
    from datetime import datetime, timezone

    from d3po.judges import simulated_annotator
    from d3po.preferences import append_judgement
    from d3po.rewards import load_images

    manifest = read_manifest(samples_dir)
    images = load_images([Path(samples_dir) / path for path in manifest["path"]])
    first, second = [], []
    for _, group in manifest.groupby("group", sort=True):
        rows = list(group.index)
        for i, a in enumerate(rows):
            for b in rows[i + 1 :]:
                first.append(a)
                second.append(b)
    prompts = [str(manifest["prompt"][a]) for a in first]
    winners = simulated_annotator(images[first], images[second], prompts, criterion)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for a, b, prompt, winner in zip(first, second, prompts, winners, strict=True):
        judgement = {
            "prompt": prompt,
            "a": str(manifest["id"][a]),
            "b": str(manifest["id"][b]),
            "winner": str(winner),
            "annotator": annotator,
            "time": now,
        }
        append_judgement(out, judgement)
    return len(first)
