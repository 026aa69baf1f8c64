"""D3PO: direct preference optimisation applied to each denoising step.

Yang et al. 2024, "Using Human Feedback to Fine-tune Diffusion Models without Any Reward Model"
(arXiv 2311.13231), eq. 9 with the ratio clamp of their implementation. For a pair in which
image w is preferred over image l, at each trained timestep t separately:

    r_t(i)  = clamp( pi_theta(x^i_{t-1} | x^i_t) / pi_ref(x^i_{t-1} | x^i_t), 1 - eps, 1 + eps )
    L_t     = -log sigmoid( beta * [ log r_t(w) - log r_t(l) ] )

pi_ref is the frozen base model (the same UNet with the LoRA adapter off). Clamping the ratio is
clamping its log to [log(1 - eps), log(1 + eps)]: same value, no exp/log round trip, and the
gradient is zero outside the band, as with the clamped ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from d3po.methods.base import Feedback, Items, Method, Policy, require_positive, trained_steps


def d3po_loss(
    policy_log_prob_winner: torch.Tensor,
    reference_log_prob_winner: torch.Tensor,
    policy_log_prob_loser: torch.Tensor,
    reference_log_prob_loser: torch.Tensor,
    beta: float,
    eps: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-item D3PO loss (N,) for N (pair, timestep) items, and its diagnostics."""
    low, high = math.log1p(-eps), math.log1p(eps)
    raw_log_ratio_winner = policy_log_prob_winner - reference_log_prob_winner  # (N,)
    raw_log_ratio_loser = policy_log_prob_loser - reference_log_prob_loser  # (N,)
    log_ratio_winner = raw_log_ratio_winner.clamp(low, high)
    log_ratio_loser = raw_log_ratio_loser.clamp(low, high)
    logits = beta * (log_ratio_winner - log_ratio_loser)
    loss = -F.logsigmoid(logits)

    raw = torch.cat([raw_log_ratio_winner, raw_log_ratio_loser]).detach()
    diagnostics = {
        "log_ratio_winner": raw_log_ratio_winner.detach().mean(),
        "log_ratio_loser": raw_log_ratio_loser.detach().mean(),
        "clip_fraction": ((raw < low) | (raw > high)).float().mean(),
        "accuracy": (logits.detach() > 0).float().mean(),
    }
    return loss, diagnostics


@dataclass(frozen=True)
class D3POOptions:
    beta: float = 0.1
    """Inverse temperature of the DPO loss."""
    eps: float = 0.1
    """Policy/reference ratios are clamped to [1 - eps, 1 + eps]."""

    def __post_init__(self) -> None:
        require_positive(self, "beta", "eps")


class D3PO(Method):
    """Preference pairs (people's, or Pareto dominance of the proxies); the DPO loss per step."""

    name = "d3po"
    summary = "D3PO: the DPO loss on every denoising step of preference pairs"
    signal = "preferences"
    accepts_judgements = True
    needs_reference_log_probs = True
    Options = D3POOptions

    def prepare(self, feedback: Feedback, generator: torch.Generator) -> Items:
        """Items of all preference pairs x their trained steps, with reference log-probs."""
        trajectories = feedback.trajectories
        pairs = feedback.preference_pairs()  # (P, 2): winner, loser
        fraction = self.training.timestep_fraction
        unit, step = trained_steps(len(pairs), trajectories.num_steps, fraction, generator)
        winner, loser = pairs[unit, 0], pairs[unit, 1]
        reference = trajectories.reference_log_probs.cpu()  # (B, T)
        tensors = {
            "unit": unit,
            "step": step,
            "weight": torch.ones(len(unit)),
            "winner": winner,
            "loser": loser,
            "reference_winner": reference[winner, step],
            "reference_loser": reference[loser, step],
        }
        return Items(tensors, num_units=len(pairs))

    def loss(self, items: Items, policy: Policy):
        both = policy.log_prob(
            torch.cat([items["winner"], items["loser"]]), torch.cat([items["step"], items["step"]])
        )
        policy_winner, policy_loser = both.chunk(2)
        device = both.device
        return d3po_loss(
            policy_winner,
            items["reference_winner"].to(device),
            policy_loser,
            items["reference_loser"].to(device),
            beta=self.options.beta,
            eps=self.options.eps,
        )
