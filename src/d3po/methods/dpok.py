"""DPOK: policy gradient on the reward with a KL penalty to the pretrained model.

Fan et al. 2023, "DPOK: Reinforcement Learning for Fine-tuning Text-to-Image Diffusion Models"
(NeurIPS 2023). The reward term is DDPO's (per-prompt normalised advantages, clipped ratio
against the sampling policy); the KL term keeps every denoising step close to the base model's.
Both steps are Gaussians with the same sigma_t, so their KL is closed-form:

    KL_t = || mu_theta(x_t, t, c) - mu_ref(x_t, t, c) ||^2 / (2 sigma_t^2)
    L_t  = reward_weight * max( -A * ratio, -A * clip(ratio, 1 - clip_range, 1 + clip_range) )
           + kl_weight * KL_t

The squared distance is reduced over latent dimensions like the log-probs (``mean`` or
``sum``, training.log_prob_reduction), so the KL is on the scale of the log-ratios it bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from d3po.methods.base import Items, Policy, require_positive
from d3po.methods.ddpo import DDPO, DDPOOptions, ppo_clip_loss


def gaussian_kl(
    policy_mean: torch.Tensor, reference_mean: torch.Tensor, std: torch.Tensor, reduction: str
) -> torch.Tensor:
    """(N,) KL( N(policy_mean, std^2) || N(reference_mean, std^2) ), reduced over dimensions."""
    per_dimension = (policy_mean - reference_mean) ** 2 / (2 * std**2)  # (N, C, H, W)
    dims = tuple(range(1, per_dimension.ndim))
    return per_dimension.mean(dims) if reduction == "mean" else per_dimension.sum(dims)


def dpok_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    kl: torch.Tensor,
    clip_range: float,
    reward_weight: float,
    kl_weight: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-item DPOK loss (N,) for N (sample, timestep) items, and its diagnostics."""
    policy_gradient, diagnostics = ppo_clip_loss(log_prob, old_log_prob, advantages, clip_range)
    loss = reward_weight * policy_gradient + kl_weight * kl
    return loss, {**diagnostics, "kl": kl.detach().mean()}


@dataclass(frozen=True)
class DPOKOptions(DDPOOptions):
    reward_weight: float = 10.0
    """Weight of the policy-gradient (reward) term."""
    kl_weight: float = 0.01
    """Weight of the KL penalty to the pretrained model."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(self, "reward_weight")
        if self.kl_weight < 0:
            raise ValueError(f"kl_weight: must be >= 0 (0: no KL penalty), got {self.kl_weight}")


class DPOK(DDPO):
    """DDPO's items and reward term, plus the closed-form per-step KL to the base model."""

    name = "dpok"
    summary = "DPOK: policy gradient on the reward with a per-step KL penalty to the base model"
    needs_reference_log_probs = False  # the KL needs the reference mean, computed per item
    Options = DPOKOptions

    def loss(self, items: Items, policy: Policy):
        # with gradients; its log_prob is DDPO's policy_log_prob (Policy.log_prob = step().log_prob)
        step = policy.step(items["unit"], items["step"])
        reference = policy.reference_step(items["unit"], items["step"])  # adapter off
        device = step.log_prob.device
        kl = gaussian_kl(step.mean, reference.mean, step.std, policy.reduction)
        return dpok_loss(
            step.log_prob,
            items["old_log_prob"].to(device),
            items["advantage"].to(device),
            kl,
            clip_range=self.options.clip_range,
            reward_weight=self.options.reward_weight,
            kl_weight=self.options.kl_weight,
        )
