"""Reward-weighted fine-tuning: the denoising loss on model samples, weighted by their reward.

Lee et al. 2023, "Aligning Text-to-Image Models using Human Feedback" (arXiv 2302.12192), eq. 2
without its pre-training term (no pre-training data here). The samples are the model's own
final latents x_0; each is noised afresh at a random training timestep t and the UNet predicts
the noise (the usual DDPM objective):

    x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) noise,      noise ~ N(0, I),   t ~ U{0, ..., 999}
    L   = w(x_0, c) * || noise - eps_theta(x_t, t, c) ||^2          (mean over dimensions)

Lee et al.'s w is a learned reward in [0, 1] (the probability that the image is "good"). Here:

- online, w = sigmoid((r - mean r) / std r) of the proxy reward r over the epoch's samples;
- on a judged set, w = the share of its decided comparisons the image won (its "good" label;
  an image that won every comparison weighs 1). Images of weight 0 are not trained on.

Each sample is trained at ceil(training.timestep_fraction * T) random (t, noise) draws, as many
items as the step-wise methods train per sample.
"""

from __future__ import annotations

import numpy as np
import torch

from d3po.methods.base import Feedback, Items, Method, Policy, steps_per_unit
from d3po.sampling import Trajectories


def weighted_denoising_loss(
    prediction: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-item loss (N,): sample_weight * mean squared error of the noise prediction."""
    dims = tuple(range(1, prediction.ndim))
    error = ((prediction - target) ** 2).mean(dims)  # (N,)
    return sample_weight * error, {
        "denoising_mse": error.detach().mean(),
        "sample_weight": sample_weight.detach().mean(),
    }


def denoising_items(
    trajectories: Trajectories,
    samples: torch.Tensor,
    sample_weight: torch.Tensor,
    fraction: float,
    generator: torch.Generator,
) -> Items:
    """Items of the denoising loss: one unit per entry of ``samples`` (sample indices, (U,)),
    each at ceil(fraction * T) random noise levels in [0, 1) and fresh noises."""
    per_unit = steps_per_unit(fraction, trajectories.num_steps)
    unit = torch.arange(len(samples)).repeat_interleave(per_unit)  # (N,)
    shape = trajectories.latents.shape[2:]  # (C, H, W)
    return Items(
        {
            "unit": unit,
            "weight": torch.ones(len(unit)),
            "sample": samples[unit],
            "sample_weight": sample_weight[unit].float(),
            "noise_level": torch.rand(len(unit), generator=generator),
            "noise": torch.randn(len(unit), *shape, generator=generator),
        },
        num_units=len(samples),
    )


def reward_weights(rewards: np.ndarray) -> torch.Tensor:
    """(B,) sigmoid of the batch-standardised rewards: a "good" probability in (0, 1)."""
    rewards = torch.as_tensor(rewards, dtype=torch.float64)
    standardised = (rewards - rewards.mean()) / (rewards.std(correction=0) + 1e-6)
    return torch.sigmoid(standardised).float()


def win_shares(pairs: torch.Tensor, num_samples: int) -> torch.Tensor:
    """(B,) share of its decided comparisons each image won (0 for images never decided)."""
    wins = torch.bincount(pairs[:, 0], minlength=num_samples).float()
    losses = torch.bincount(pairs[:, 1], minlength=num_samples).float()
    return wins / (wins + losses).clamp(min=1)


class RewardWeighted(Method):
    """The denoising loss on the model's samples, weighted by reward (or human "good" label)."""

    name = "reward_weighted"
    summary = "Reward-weighted fine-tuning (Lee et al. 2023): denoising loss x sample reward"
    signal = "reward"
    accepts_judgements = True

    def prepare(self, feedback: Feedback, generator: torch.Generator) -> Items:
        if feedback.pairs is None:
            sample_weight = reward_weights(feedback.rewards())
        else:
            sample_weight = win_shares(feedback.preference_pairs(), feedback.num_samples)
        samples = (sample_weight > 0).nonzero().squeeze(1)
        return denoising_items(
            feedback.trajectories,
            samples,
            sample_weight[samples],
            self.training.timestep_fraction,
            generator,
        )

    def loss(self, items: Items, policy: Policy):
        """The weighted denoising loss of a micro-batch of ``denoising_items``."""
        train_steps = policy.scheduler.config.num_train_timesteps
        timesteps = (items["noise_level"] * train_steps).long().clamp(max=train_steps - 1)
        prediction, target = policy.noise_prediction(items["sample"], timesteps, items["noise"])
        return weighted_denoising_loss(prediction, target, items["sample_weight"].to(target.device))
