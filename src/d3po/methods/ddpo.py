"""The DDPO baseline: PPO-clip on the denoising MDP with per-prompt normalised advantages.

Black et al. 2023, "Training Diffusion Models with Reinforcement Learning" (DDPO_IS). Rewards
are normalised per prompt with a buffer of that prompt's recent rewards (falling back to the
batch statistics until the buffer holds ``min_count`` rewards), clipped, and used in

    ratio = pi_theta(x_{t-1} | x_t) / pi_old(x_{t-1} | x_t)        (pi_old: the sampling policy)
    L     = mean( max( -A * ratio, -A * clip(ratio, 1 - clip_range, 1 + clip_range) ) )

log pi_old is not the log-prob recorded while sampling but the same weights' log-prob recomputed
by the loop on the training forward (``needs_old_log_probs``): other batch shapes give other
rounding, and in bf16 that alone exceeds the 1e-4 clip for a quarter of the items.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass

import numpy as np
import torch

from d3po.methods.base import Feedback, Items, Method, Policy, require_positive, trained_steps


def ppo_clip_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-item PPO-clip loss (N,) for N (sample, timestep) items, and its diagnostics."""
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    unclipped_loss = -advantages * ratio
    clipped_loss = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped_loss, clipped_loss)
    diagnostics = {
        "log_ratio": log_ratio.detach().mean(),
        "approx_kl": 0.5 * (log_ratio.detach() ** 2).mean(),
        "clip_fraction": ((ratio.detach() - 1.0).abs() > clip_range).float().mean(),
    }
    return loss, diagnostics


class PerPromptStatTracker:
    """Normalises rewards with the mean/std of the same prompt's recent rewards."""

    def __init__(self, buffer_size: int, min_count: int) -> None:
        self.min_count = min_count
        self.buffers: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=buffer_size))

    def advantages(self, prompts: list[str], rewards: np.ndarray) -> np.ndarray:
        """Add ``rewards`` (B,) to the buffers and return their normalised advantages (B,)."""
        rewards = np.asarray(rewards, dtype=np.float64)
        advantages = np.empty_like(rewards)
        for prompt in sorted(set(prompts)):
            mask = np.array([p == prompt for p in prompts])
            self.buffers[prompt].extend(rewards[mask].tolist())
            reference = np.asarray(self.buffers[prompt])
            if len(reference) < self.min_count:
                reference = rewards
            advantages[mask] = (rewards[mask] - reference.mean()) / (reference.std() + 1e-6)
        return advantages

    def state_dict(self) -> dict[str, list[float]]:
        return {prompt: list(buffer) for prompt, buffer in self.buffers.items()}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self.buffers.clear()
        for prompt, values in state.items():
            self.buffers[prompt].extend(values)


@dataclass(frozen=True)
class DDPOOptions:
    clip_range: float = 1e-4
    """PPO ratio clip (DDPO uses a very small one)."""
    adv_clip_max: float = 5.0
    """Advantages are clipped to [-adv_clip_max, adv_clip_max]."""
    buffer_size: int = 16
    """Per-prompt buffer of recent rewards used to normalise advantages."""
    min_count: int = 16
    """Below this many rewards for a prompt, normalise with the batch statistics."""

    def __post_init__(self) -> None:
        require_positive(self, "clip_range", "adv_clip_max", "buffer_size", "min_count")


class DDPO(Method):
    """Scalar rewards, per-prompt normalised advantages, PPO-clip against the sampling policy."""

    name = "ddpo"
    summary = "DDPO: PPO-clip on the denoising steps with per-prompt normalised rewards"
    signal = "reward"
    accepts_judgements = False
    needs_reference_log_probs = False  # the ratio is against the sampling policy
    needs_old_log_probs = True  # ... recomputed on the training path, so it starts at 1
    Options = DDPOOptions

    def __init__(self, options: DDPOOptions, training) -> None:
        super().__init__(options, training)
        self.tracker = PerPromptStatTracker(options.buffer_size, options.min_count)

    def prepare(self, feedback: Feedback, generator: torch.Generator) -> Items:
        trajectories = feedback.trajectories
        advantages = self.tracker.advantages(trajectories.prompts, feedback.rewards())
        clip = self.options.adv_clip_max
        advantages = torch.as_tensor(np.clip(advantages, -clip, clip), dtype=torch.float32)
        fraction = self.training.timestep_fraction
        unit, step = trained_steps(
            feedback.num_samples, trajectories.num_steps, fraction, generator
        )
        tensors = {
            "unit": unit,
            "step": step,
            "weight": torch.ones(len(unit)),
            "advantage": advantages[unit],
        }
        return Items(tensors, num_units=feedback.num_samples)

    def policy_log_prob(self, items: Items, policy: Policy) -> torch.Tensor:
        return policy.log_prob(items["unit"], items["step"])

    def loss(self, items: Items, policy: Policy):
        log_prob = self.policy_log_prob(items, policy)
        device = log_prob.device
        return ppo_clip_loss(
            log_prob,
            items["old_log_prob"].to(device),
            items["advantage"].to(device),
            clip_range=self.options.clip_range,
        )

    def state_dict(self) -> dict:
        return {"tracker": self.tracker.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.tracker.load_state_dict(state["tracker"])
