"""The DDPO baseline: PPO-clip on the denoising MDP with per-prompt normalised advantages.

Black et al. 2023, "Training Diffusion Models with Reinforcement Learning" (DDPO_IS). Rewards
are normalised per prompt with a buffer of that prompt's recent rewards (falling back to the
batch statistics until the buffer holds ``min_count`` rewards), clipped, and used in

    ratio = pi_theta(x_{t-1} | x_t) / pi_old(x_{t-1} | x_t)        (pi_old: the sampling policy)
    L     = mean( max( -A * ratio, -A * clip(ratio, 1 - clip_range, 1 + clip_range) ) )
"""

from __future__ import annotations

from collections import defaultdict, deque

import numpy as np
import torch


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
        self.buffer_size = buffer_size
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
