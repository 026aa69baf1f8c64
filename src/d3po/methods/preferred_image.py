"""Preferred-image fine-tuning: the denoising loss on the images people preferred, only.

The simplest use of preference pairs (the baseline of Yang et al. 2024, sec. 5.3): for every
pair (w preferred over l), the plain denoising loss on the winner's final latents x_0, and
nothing from the loser; an image that won several pairs is trained on once per pair:

    x_t = sqrt(a_t) x^w_0 + sqrt(1 - a_t) noise,    L = || noise - eps_theta(x_t, t, c) ||^2

See reward_weighted.py for the noising; the pairs are people's, or the Pareto pairs of the
proxy objectives when online.
"""

from __future__ import annotations

import torch

from d3po.methods.base import Feedback, Items
from d3po.methods.reward_weighted import RewardWeighted, denoising_items


class PreferredImage(RewardWeighted):
    """The denoising loss (reward_weighted's, weight 1) on the winner of every preference pair."""

    name = "preferred_image"
    summary = "Preferred-image fine-tuning: denoising loss on the winners of the pairs"
    signal = "preferences"

    def prepare(self, feedback: Feedback, generator: torch.Generator) -> Items:
        winners = feedback.preference_pairs()[:, 0]  # (P,)
        weights = torch.ones(len(winners))
        fraction = self.training.timestep_fraction
        return denoising_items(feedback.trajectories, winners, weights, fraction, generator)
