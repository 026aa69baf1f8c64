"""The D3PO loss: direct preference optimisation applied to each denoising step.

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

import torch
import torch.nn.functional as F


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
