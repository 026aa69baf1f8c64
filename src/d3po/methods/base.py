"""What every training method shares: its declaration, its training items, the model it sees.

A method is a subclass of :class:`Method` that declares what it needs as class attributes
(read by the training loop, by ``d3po.config`` and by the workflow's config check):

- ``signal``: ``"reward"`` (one scalar proxy objective per sample) or ``"preferences"``
  (the Pareto order of any number of objectives: only which image is better counts);
- ``accepts_judgements``: whether it trains on a judged sample set (people's pairs);
- ``needs_reference_log_probs``: whether the loop records log pi_ref of every sampled step;
- ``needs_old_log_probs``: whether the loop recomputes, on the training path, the log-probs the
  ratio is taken against (``old_log_prob`` of each item; the method's ``policy_log_prob``);
- ``Options``: a frozen dataclass, the method's block in the config (fields, types, defaults).

It turns one epoch's samples into (unit, item) training rows (``prepare``) and gives the loss
of a micro-batch of rows (``loss``); an optimizer step takes whole units, so a unit's gradient
is averaged over all its rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch

from d3po.models import reference_policy
from d3po.preferences import preference_pairs
from d3po.sampling import StepOutput, Trajectories, recorded_step

if TYPE_CHECKING:
    from d3po.config import SamplerSpec, TrainingSpec

Signal = Literal["reward", "preferences"]


@dataclass(frozen=True)
class NoOptions:
    """A method without options of its own."""


def require_positive(options: Any, *names: str) -> None:
    """For an Options ``__post_init__``: ValueError naming the first field that is not > 0."""
    for name in names:
        value = getattr(options, name)
        if not value > 0:
            raise ValueError(f"{name}: must be > 0, got {value!r}")


class Method:
    """A training method: declarations (class attributes), items, loss."""

    name: ClassVar[str]
    """The name in configs and on the command line (``experiments.X.methods``)."""
    summary: ClassVar[str]
    """One line for listings and error messages."""
    signal: ClassVar[Signal]
    """Online feedback: 'reward' (exactly one proxy objective) or 'preferences' (any number)."""
    accepts_judgements: ClassVar[bool]
    """Trains on a judged sample set (``d3po train --samples DIR --judgements FILE``)."""
    needs_reference_log_probs: ClassVar[bool] = False
    """The loop records log pi_ref (adapter off) of every step into the trajectories."""
    needs_old_log_probs: ClassVar[bool] = False
    """The loop sets each item's ``old_log_prob`` (log pi_old, the sampling policy) to
    ``policy_log_prob`` computed without gradients before the epoch's first optimizer step, on
    the very micro-batches, module and autocast of the training forward: the ratio starts at
    exactly 1. (The log-probs recorded while sampling come from other batches, which in bf16
    on a GPU differ by more than DDPO's 1e-4 ratio clip.)"""
    Options: ClassVar[type] = NoOptions
    """The method's config block: a frozen dataclass with a docstring under each field."""

    def __init__(self, options: Any, training: TrainingSpec) -> None:
        self.options = options
        self.training = training

    def prepare(self, feedback: Feedback, generator: torch.Generator) -> Items:
        """Training items of one epoch's samples and their feedback."""
        raise NotImplementedError

    def loss(self, items: Items, policy: Policy) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-item loss (N,) of a micro-batch and its diagnostics."""
        raise NotImplementedError

    def policy_log_prob(self, items: Items, policy: Policy) -> torch.Tensor:
        """(N,) the log-probs whose ratio to ``old_log_prob`` the loss takes (methods that
        declare ``needs_old_log_probs``); the loss must compute them with this same call."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """What a resumed run needs besides the adapter and optimizer (e.g. reward buffers)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass
class Items:
    """Training items of one epoch: equal-length (N, ...) tensors.

    ``unit`` says whose item it is (a pair or a sample), ``weight`` is 1, or 0 for the padding
    that evens out the processes' shares of a step.
    """

    tensors: dict[str, torch.Tensor]
    num_units: int

    def __len__(self) -> int:
        return self.tensors["unit"].shape[0]

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def select(self, index: torch.Tensor | slice) -> Items:
        return Items({k: v[index] for k, v in self.tensors.items()}, self.num_units)

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


def steps_per_unit(fraction: float, num_steps: int) -> int:
    """ceil(fraction * T), at least 1; rounded first, so that 0.14 * 50 = 7.000000000000001
    trains 7 steps, not 8."""
    return max(1, math.ceil(round(fraction * num_steps, 9)))


def trained_steps(
    num_units: int, num_steps: int, fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(unit, step) index pairs: a random ``fraction`` of the T steps for each unit."""
    per_unit = steps_per_unit(fraction, num_steps)
    permutations = [torch.randperm(num_steps, generator=generator) for _ in range(num_units)]
    steps = torch.stack(permutations) if permutations else torch.zeros(0, num_steps).long()
    steps = steps[:, :per_unit]  # (U, per_unit)
    units = torch.arange(num_units).unsqueeze(1).expand_as(steps)
    return units.reshape(-1), steps.reshape(-1)


@dataclass
class Feedback:
    """One epoch's samples and what judged them: proxy scores (online) or people's pairs."""

    trajectories: Trajectories
    scores: np.ndarray | None = None
    """(B, objectives) proxy scores of the samples, when online."""
    pairs: torch.Tensor | None = None
    """(P, 2) sample indices (winner, loser) that people judged, on a judged set."""

    @property
    def num_samples(self) -> int:
        return len(self.trajectories.prompts)

    def preference_pairs(self) -> torch.Tensor:
        """(P, 2) winner/loser sample indices: people's pairs, or the Pareto-dominance pairs of
        the proxy scores among the images of each group (ties skipped)."""
        if self.pairs is not None:
            return self.pairs.reshape(-1, 2)
        groups = self.trajectories.groups.numpy()
        return torch.as_tensor(preference_pairs(groups, self.scores)).long().reshape(-1, 2)

    def rewards(self) -> np.ndarray:
        """(B,) the scalar reward of each sample: its score on the (one) objective."""
        return self.scores[:, 0]


@dataclass
class Policy:
    """The UNet as a method sees it, on one batch of trajectories.

    ``unet`` is the training forward (DDP-wrapped when distributed: gradients flow and are
    synchronised); ``bare`` is the same module unwrapped, used without gradients for the frozen
    reference (adapter off).
    """

    unet: torch.nn.Module
    bare: torch.nn.Module
    scheduler: Any
    trajectories: Trajectories
    sampler: SamplerSpec
    reduction: str

    def step(self, sample_index: torch.Tensor, step_index: torch.Tensor) -> StepOutput:
        """The Gaussian of recorded steps (N items) under the policy, and their log-probs."""
        return self._step(self.unet, sample_index, step_index)

    def log_prob(self, sample_index: torch.Tensor, step_index: torch.Tensor) -> torch.Tensor:
        """(N,) log pi_theta(x_{t-1} | x_t) of recorded steps."""
        return self.step(sample_index, step_index).log_prob

    @torch.no_grad()
    def reference_step(self, sample_index: torch.Tensor, step_index: torch.Tensor) -> StepOutput:
        """The same under the frozen base model (adapter off, no gradients)."""
        with reference_policy(self.bare):
            return self._step(self.bare, sample_index, step_index)

    def _step(self, unet, sample_index, step_index) -> StepOutput:
        return recorded_step(
            unet,
            self.scheduler,
            self.trajectories,
            sample_index,
            step_index,
            self.sampler,
            self.reduction,
        )

    def noise_prediction(
        self, sample_index: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The denoising objective on the samples' final latents x_0 (DDPM training).

        x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) noise at training timesteps t (N,); returns the
        conditional UNet's prediction and its target (the noise, or the velocity for
        v-prediction models), both (N, C, H, W), in float32.
        """
        device = self.trajectories.latents.device
        sample_index = sample_index.to(device)
        timesteps, noise = timesteps.to(device), noise.to(device)
        x_0 = self.trajectories.latents[sample_index, -1].float()  # (N, C, H, W)
        x_t = self.scheduler.add_noise(x_0, noise, timesteps)
        if self.scheduler.config.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(x_0, noise, timesteps)
        else:
            target = noise
        dtype = next(self.bare.parameters()).dtype
        embeds = self.trajectories.prompt_embeds[sample_index].to(dtype)
        prediction = self.unet(x_t.to(dtype), timesteps, embeds).sample
        return prediction.float(), target.float()
