"""D3PO and DDPO as plug-ins of the shared training loop.

A method turns one epoch of sampled trajectories and their proxy scores into training items,
and gives the loss of a micro-batch of items. Items are (unit, timestep) rows, where a unit is
a preference pair (D3PO) or a sample (DDPO); an optimizer step takes whole units, so a pair's
gradient is averaged over all its trained timesteps, as in the paper.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from d3po.config import TrainSettings
from d3po.d3po import d3po_loss
from d3po.ddpo import PerPromptStatTracker, ppo_clip_loss
from d3po.preferences import preference_pairs
from d3po.sampling import Trajectories

LogProbFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(sample_index (N,), step_index (N,)) -> log pi_theta of those recorded steps (N,)."""


@dataclass
class Items:
    """Training items of one epoch: equal-length (N,) tensors.

    ``unit`` says whose item it is (a pair or a sample), ``weight`` is 1, or 0 for the padding
    that evens out the processes' shares of a step.
    """

    tensors: dict[str, torch.Tensor]
    num_units: int

    def __len__(self) -> int:
        return self.tensors["unit"].shape[0]

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def select(self, index: torch.Tensor) -> Items:
        return Items({k: v[index] for k, v in self.tensors.items()}, self.num_units)

    def slice(self, start: int, stop: int) -> Items:
        return Items({k: v[start:stop] for k, v in self.tensors.items()}, self.num_units)

    def shard(self, rank: int, world: int) -> Items:
        """Items rank, rank + world, ...; padded with zero-weight copies to equal length."""
        if world == 1:
            return self
        per_process = -(-len(self) // world)
        index = torch.arange(rank, per_process * world, world)
        shard = self.select(index % len(self))
        shard.tensors["weight"] = shard.tensors["weight"] * (index < len(self))
        return shard

    def of_units(self, units: torch.Tensor) -> Items:
        return self.select(torch.isin(self.tensors["unit"], units).nonzero().squeeze(1))


def trained_steps(
    num_units: int, num_steps: int, fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(unit, step) index pairs: a random ``fraction`` of the T steps for each unit."""
    per_unit = max(1, math.ceil(fraction * num_steps))
    permutations = [torch.randperm(num_steps, generator=generator) for _ in range(num_units)]
    steps = torch.stack(permutations) if permutations else torch.zeros(0, num_steps).long()
    steps = steps[:, :per_unit]  # (U, per_unit)
    units = torch.arange(num_units).unsqueeze(1).expand_as(steps)
    return units.reshape(-1), steps.reshape(-1)


class D3PO:
    """Preferences from Pareto dominance of the proxy scores; the DPO loss per timestep."""

    name = "d3po"
    needs_reference = True  # the loop records log pi_ref of every step, adapter off

    def __init__(self, settings: TrainSettings) -> None:
        self.spec = settings.d3po
        self.fraction = settings.training.timestep_fraction

    def prepare(
        self,
        trajectories: Trajectories,
        scores: np.ndarray | None,
        generator: torch.Generator,
        pairs: torch.Tensor | None = None,
    ) -> Items:
        """Items of all preference pairs: given by people (``pairs``), or by Pareto dominance
        of the proxy ``scores`` among the images of each group."""
        if pairs is None:
            pairs = torch.as_tensor(preference_pairs(trajectories.groups.numpy(), scores)).long()
        pairs = pairs.reshape(-1, 2)  # (P, 2): winner, loser
        unit, step = trained_steps(len(pairs), trajectories.num_steps, self.fraction, generator)
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

    def loss(self, items: Items, policy_log_prob: LogProbFn):
        both = policy_log_prob(
            torch.cat([items["winner"], items["loser"]]), torch.cat([items["step"], items["step"]])
        )
        policy_winner, policy_loser = both.chunk(2)
        device = both.device
        return d3po_loss(
            policy_winner,
            items["reference_winner"].to(device),
            policy_loser,
            items["reference_loser"].to(device),
            beta=self.spec.beta,
            eps=self.spec.eps,
        )


class DDPO:
    """Scalar rewards, per-prompt normalised advantages, PPO-clip against the sampling policy."""

    name = "ddpo"
    needs_reference = False  # the ratio is against the sampling policy, recorded while sampling

    def __init__(self, settings: TrainSettings) -> None:
        self.spec = settings.ddpo
        self.fraction = settings.training.timestep_fraction
        self.tracker = PerPromptStatTracker(self.spec.buffer_size, self.spec.min_count)

    def prepare(
        self,
        trajectories: Trajectories,
        scores: np.ndarray,
        generator: torch.Generator,
        pairs: None = None,
    ) -> Items:
        advantages = self.tracker.advantages(trajectories.prompts, scores[:, 0])
        advantages = np.clip(advantages, -self.spec.adv_clip_max, self.spec.adv_clip_max)
        num_samples = len(trajectories.prompts)
        unit, step = trained_steps(num_samples, trajectories.num_steps, self.fraction, generator)
        tensors = {
            "unit": unit,
            "step": step,
            "weight": torch.ones(len(unit)),
            "old_log_prob": trajectories.log_probs.cpu()[unit, step],
            "advantage": torch.as_tensor(advantages, dtype=torch.float32)[unit],
        }
        return Items(tensors, num_units=num_samples)

    def loss(self, items: Items, policy_log_prob: LogProbFn):
        log_prob = policy_log_prob(items["unit"], items["step"])
        device = log_prob.device
        return ppo_clip_loss(
            log_prob,
            items["old_log_prob"].to(device),
            items["advantage"].to(device),
            clip_range=self.spec.clip_range,
        )

    def state_dict(self) -> dict:
        return {"tracker": self.tracker.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.tracker.load_state_dict(state["tracker"])


METHODS = {"d3po": D3PO, "ddpo": DDPO}


def make_method(settings: TrainSettings) -> D3PO | DDPO:
    if settings.method not in METHODS:
        known = ", ".join(METHODS)
        raise ValueError(f"method: unknown method '{settings.method}'; known methods: {known}")
    return METHODS[settings.method](settings)
