"""Typed, frozen settings for each step, parsed from the JSON documents the workflow passes.

Config flows one way: YAML -> JSON schema (defaults, descriptions) -> rule params -> these
dataclasses -> functions. Unknown or mistyped keys fail here with the key's full name, so a
typo in a hand-written settings file is never silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from d3po.errors import ConfigError, UserError
from d3po.models import LoraSpec, ModelSpec

T = TypeVar("T")


class StateError(UserError, RuntimeError):
    """A saved training state that does not fit these settings or cannot be read; it is left as
    it is for the user to move away or to resume with the settings it was made with."""


@dataclass(frozen=True)
class SamplerSpec:
    """The sampling policy: a stochastic DDIM step with classifier-free guidance."""

    num_steps: int = 20
    """DDIM steps T; each one is an action of the MDP."""
    eta: float = 1.0
    """DDIM noise scale; must be > 0 for the step to have a log-probability."""
    guidance_scale: float = 5.0
    """Classifier-free guidance weight (1 = no guidance)."""
    images_per_call: int = 32
    """Images per UNet call while sampling (each image is two UNet items with guidance); a
    memory knob only: noise is drawn per image, so it does not change the samples."""


@dataclass(frozen=True)
class TrainingSpec:
    """The online loop every method shares."""

    epochs: int = 10
    checkpoint_every: int = 5
    """Save the adapter (and the resume state) every N epochs, and after the last one."""
    prompts_per_epoch: int = 10
    """Prompts drawn (with replacement) per epoch."""
    images_per_prompt: int = 2
    """K images per prompt from one initial noise; D3PO gets K(K-1)/2 pairs per prompt."""
    units_per_step: int = 1
    """Units per optimizer step; a unit is a preference pair (D3PO) or a sample (DDPO)."""
    micro_batch_size: int = 32
    """(unit, timestep) items per forward/backward; the loss is a sum, so this is exact."""
    timestep_fraction: float = 1.0
    """Fraction of the denoising steps trained per unit (a random subset each epoch)."""
    learning_rate: float = 3e-5
    weight_decay: float = 1e-4
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    """'no', 'fp16' or 'bf16' (autocast on GPU; ignored on CPU)."""
    gradient_checkpointing: bool = False
    log_prob_reduction: str = "mean"
    """How a step's Gaussian log-density is reduced over latent dimensions: 'mean' (as the
    reference implementation, which shrinks every log-ratio by the number of dimensions, so
    beta and eps act on a per-dimension scale) or 'sum' (the exact log-density)."""


@dataclass(frozen=True)
class TrainSettings:
    """Everything `d3po train` needs for one run (experiment x method x seed)."""

    method: str
    prompts: tuple[str, ...]
    objectives: tuple[str, ...]
    seed: int = 0
    model: ModelSpec = field(default_factory=ModelSpec)
    lora: LoraSpec = field(default_factory=LoraSpec)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    method_options: dict[str, Any] = field(default_factory=dict)
    """The method's own options (its ``Options`` dataclass; config block ``methods.NAME``)."""
    proxy_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ConfigError("prompts: the training prompt list is empty")
        if not self.objectives:
            raise ConfigError("objectives: name at least one proxy objective")
        from d3po.methods import method_class, parse_options

        method = method_class(self.method)
        if method.signal == "reward" and len(self.objectives) != 1:
            raise ConfigError(
                f"objectives: {self.method} needs one scalar reward, got {len(self.objectives)} "
                f"({', '.join(self.objectives)}); use a preference method for several (Pareto) "
                "objectives"
            )
        # with every default filled in, so that a saved state's settings compare exactly
        options = parse_options(self.method, self.method_options, "method_options")
        object.__setattr__(self, "method_options", dataclasses.asdict(options))


@dataclass(frozen=True)
class SampleSettings:
    """Everything `d3po sample` needs: a model, prompts and seeds."""

    prompts: tuple[str, ...]
    images_per_prompt: int = 4
    seed: int = 0
    model: ModelSpec = field(default_factory=ModelSpec)
    lora: LoraSpec = field(default_factory=LoraSpec)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ConfigError("prompts: the prompt list is empty")


def parse(cls: type[T], data: dict[str, Any] | str | Path, where: str = "settings") -> T:
    """Build dataclass ``cls`` from a dict, a JSON string or a JSON file, checking every key."""
    if isinstance(data, Path):
        data = json.loads(data.read_text())
    elif isinstance(data, str):
        data = json.loads(data)
    return _build(cls, data, where)


def _build(cls: type[T], data: Any, where: str) -> T:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    values = {key: typed_value(hints[key], value, f"{where}.{key}") for key, value in data.items()}
    return cls(**values)


def typed_value(hint: Any, value: Any, where: str) -> Any:
    """``value`` checked against the type ``hint`` (int, float, str, bool, ``X | None``,
    tuple or a settings dataclass); ConfigError naming ``where`` otherwise."""
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):  # X | None
        if value is None:
            return None
        return typed_value(next(a for a in args if a is not type(None)), value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(value)
    stray_bool = isinstance(value, bool) and hint is not bool  # isinstance(True, int) holds
    if hint is float and isinstance(value, int | float) and not stray_bool:
        return float(value)
    if hint in (int, float, str, bool) and (stray_bool or not isinstance(value, hint)):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value
