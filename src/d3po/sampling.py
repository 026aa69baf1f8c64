"""Denoising as a policy: DDIM sampling that records trajectories and step log-probabilities.

D3PO and DDPO see sampling as an MDP (Black et al. 2023, "Training diffusion models with
reinforcement learning"; Yang et al. 2024, "Using human feedback to fine-tune diffusion models
without any reward model", sec. 4): the state is (prompt c, timestep t, latent x_t), the action
is x_{t-1}, and the policy is one stochastic DDIM step (Song et al. 2021, eq. 12) with
classifier-free guidance, a Gaussian

    pi(x_{t-1} | x_t, c) = N(mu_theta(x_t, t, c), sigma_t^2 I),
    sigma_t = eta * sqrt((1 - a_{t-1}) / (1 - a_t)) * sqrt(1 - a_t / a_{t-1}),   a = alphas_cumprod.

``ddim_step`` computes mu, sigma and the log-density of a given or fresh x_{t-1}; ``sample``
runs the chain for a batch and keeps every latent; ``recorded_step`` recomputes the log-prob
of recorded steps under the current weights (policy, or reference with the adapter off).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.utils.torch_utils import randn_tensor

from d3po.config import SamplerSpec
from d3po.errors import ConfigError, MissingFileError


@dataclass
class StepOutput:
    prev_sample: torch.Tensor  # (B, C, H, W) x_{t-1}
    log_prob: torch.Tensor  # (B,) log pi(x_{t-1} | x_t)
    mean: torch.Tensor  # (B, C, H, W) mu_theta(x_t, t, c)
    std: torch.Tensor  # (B, 1, 1, 1) sigma_t


@dataclass
class Trajectories:
    """A batch of denoising chains: B images, T steps each."""

    prompts: list[str]  # (B,) the prompt of each image
    groups: torch.Tensor  # (B,) images with one group share prompt and initial noise x_T
    seeds: torch.Tensor  # (B,) the seed of each image's group
    latents: torch.Tensor  # (B, T + 1, C, H, W) x_T, ..., x_0
    timesteps: torch.Tensor  # (T,) the scheduler timestep of each step
    log_probs: torch.Tensor  # (B, T) log pi(x_{t-1} | x_t) under the sampling policy
    prompt_embeds: torch.Tensor  # (B, L, D) text embeddings
    negative_embeds: torch.Tensor  # (1, L, D) embedding of the empty prompt (guidance)
    images: torch.Tensor  # (B, 3, H, W) decoded x_0 in [0, 1]
    reference_log_probs: torch.Tensor | None = None  # (B, T) under pi_ref, when a method needs it

    @property
    def num_steps(self) -> int:
        return self.timesteps.shape[0]


def gaussian_log_prob(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """log N(x; mean, std^2 I) per item, reduced over all non-batch dimensions.

    ``reduction='mean'`` averages the per-dimension log-densities (the D3PO/DDPO reference
    code's choice); ``'sum'`` gives the exact joint log-density. See TrainingSpec.
    """
    # No argument validation: a diverging model's NaN mean gives a NaN log-prob, not an error.
    per_dimension = torch.distributions.Normal(mean, std, validate_args=False).log_prob(x)
    dims = tuple(range(1, x.ndim))
    if reduction == "mean":
        return per_dimension.mean(dim=dims)
    if reduction == "sum":
        return per_dimension.sum(dim=dims)
    raise ValueError(f"log_prob_reduction: expected 'mean' or 'sum', got '{reduction}'")


def _broadcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def ddim_step(
    scheduler,
    model_output: torch.Tensor,
    timestep: torch.Tensor,
    sample: torch.Tensor,
    eta: float,
    prev_sample: torch.Tensor | None = None,
    generator: list[torch.Generator] | None = None,
    reduction: str = "mean",
) -> StepOutput:
    """One stochastic DDIM step x_t -> x_{t-1}, with its Gaussian log-probability.

    Matches ``DDIMScheduler.step`` (same eta, ``use_clipped_model_output=False``) but takes a
    timestep per item, so steps from different times can share one batch. With
    ``prev_sample`` given it only scores that action. All arithmetic in float32.
    """
    config = scheduler.config
    timestep = timestep.to(sample.device)
    model_output, sample = model_output.float(), sample.float()
    step_ratio = config.num_train_timesteps // scheduler.num_inference_steps
    alphas_cumprod = scheduler.alphas_cumprod.to(sample.device)
    # The last step goes to timestep 0, never to the scheduler's "final" alpha, as in the
    # reference code (ddpo-pytorch's ddim_step_with_logprob, which D3PO's code copies, clamps
    # prev_timestep to >= 0): with ``set_alpha_to_one: true`` that final alpha is 1, sigma_t
    # would be 0 and the step's log-probability NaN. With ``set_alpha_to_one: false`` the
    # final alpha is alphas_cumprod[0] anyway, so this equals DDIMScheduler.step.
    prev_timestep = (timestep - step_ratio).clamp(min=0)
    # 1. alpha_prod_t and alpha_prod_t_prev (eq. 12's alpha_t, alpha_{t-1})
    alpha_prod_t = _broadcast(alphas_cumprod[timestep], sample)
    alpha_prod_t_prev = _broadcast(alphas_cumprod[prev_timestep], sample)
    beta_prod_t = 1 - alpha_prod_t
    # 2. predicted x_0 and predicted noise
    if config.prediction_type == "epsilon":
        pred_original_sample = (sample - beta_prod_t.sqrt() * model_output) / alpha_prod_t.sqrt()
        pred_epsilon = model_output
    elif config.prediction_type == "v_prediction":
        pred_original_sample = alpha_prod_t.sqrt() * sample - beta_prod_t.sqrt() * model_output
        pred_epsilon = alpha_prod_t.sqrt() * model_output + beta_prod_t.sqrt() * sample
    else:
        raise ValueError(f"unsupported scheduler prediction_type '{config.prediction_type}'")
    if config.thresholding:
        raise ValueError("dynamic thresholding is not supported by the D3PO sampler")
    if config.clip_sample:
        limit = config.clip_sample_range
        pred_original_sample = pred_original_sample.clamp(-limit, limit)
    # 3. sigma_t (eq. 16) and the mean of x_{t-1} (eq. 12)
    variance = (1 - alpha_prod_t_prev) / beta_prod_t * (1 - alpha_prod_t / alpha_prod_t_prev)
    std = eta * variance.sqrt()
    direction = (1 - alpha_prod_t_prev - std**2).sqrt() * pred_epsilon
    mean = alpha_prod_t_prev.sqrt() * pred_original_sample + direction
    # 4. the action and its log-probability
    if prev_sample is None:  # noise drawn per item by its own (CPU) generator: device-independent
        noise = randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        prev_sample = mean + std * noise
    prev_sample = prev_sample.float()
    log_prob = gaussian_log_prob(prev_sample.detach(), mean, std, reduction)
    return StepOutput(prev_sample, log_prob, mean, std)


def guided_noise_prediction(
    unet,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    prompt_embeds: torch.Tensor,
    negative_embeds: torch.Tensor,
    guidance_scale: float,
) -> torch.Tensor:
    """eps_uncond + w (eps_cond - eps_uncond), in one UNet call of 2B items."""
    batch = latents.shape[0]
    dtype = next(unet.parameters()).dtype  # half weights take half inputs, autocast or not
    if guidance_scale == 1.0:
        return unet(latents.to(dtype), timesteps, prompt_embeds.to(dtype)).sample
    model_input = torch.cat([latents, latents]).to(dtype)
    embeds = torch.cat([negative_embeds.expand(batch, -1, -1), prompt_embeds]).to(dtype)
    noise_uncond, noise_cond = unet(
        model_input, torch.cat([timesteps, timesteps]), embeds
    ).sample.chunk(2)
    return noise_uncond + guidance_scale * (noise_cond - noise_uncond)


def latent_shape(pipe) -> tuple[int, int, int]:
    config = pipe.unet.config
    return (config.in_channels, config.sample_size, config.sample_size)


@torch.no_grad()
def decode(pipe, latents: torch.Tensor) -> torch.Tensor:
    """x_0 -> images (B, 3, H, W) in [0, 1]; pixel-space models have no VAE."""
    if pipe.vae is not None:
        scaled = latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor
        latents = pipe.vae.decode(scaled).sample
    return pipe.image_processor.postprocess(latents.float(), output_type="pt")


@torch.no_grad()
def sample(
    pipe,
    prompts: list[str],
    images_per_prompt: int,
    seeds: list[int],
    spec: SamplerSpec,
    reduction: str = "mean",
) -> Trajectories:
    """K images per prompt, each group of K from one initial noise x_T, then diverging.

    Everything is a function of the seeds: x_T of a group comes from ``seeds[i]``, the step
    noise of image k of that group from its own generator, so a group's images do not depend
    on the batch they were sampled in.
    """
    if len(seeds) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
    if spec.eta <= 0:
        raise ConfigError("sampler.eta must be > 0: with eta = 0 a DDIM step has no log-prob")
    device = pipe.unet.device
    k = images_per_prompt
    groups = torch.arange(len(prompts)).repeat_interleave(k)  # (B,)
    image_prompts = [prompts[g] for g in groups.tolist()]
    image_seeds = torch.tensor(seeds).repeat_interleave(k)
    initial = randn_tensor(
        (len(seeds), *latent_shape(pipe)),
        generator=[torch.Generator().manual_seed(s) for s in seeds],
    ).repeat_interleave(k, dim=0)
    generators = [
        torch.Generator().manual_seed(_step_seed(int(s), i % k)) for i, s in enumerate(image_seeds)
    ]
    # without guidance, so the empty prompt's embedding is one row (not one per image)
    prompt_embeds, _ = pipe.encode_prompt(image_prompts, pipe.text_encoder.device, 1, False)
    negative_embeds, _ = pipe.encode_prompt([""], pipe.text_encoder.device, 1, False)
    pipe.scheduler.set_timesteps(spec.num_steps, device=device)
    timesteps = pipe.scheduler.timesteps.clone()

    latents = [initial.to(device)]
    log_probs = []
    for t in timesteps:
        prev_sample, log_prob = _batched_step(
            pipe, latents[-1], t, prompt_embeds, negative_embeds, spec, generators, reduction
        )
        latents.append(prev_sample)
        log_probs.append(log_prob)
    return Trajectories(
        prompts=image_prompts,
        groups=groups,
        seeds=image_seeds,
        latents=torch.stack(latents, dim=1),  # (B, T + 1, C, H, W)
        timesteps=timesteps,
        log_probs=torch.stack(log_probs, dim=1),  # (B, T)
        prompt_embeds=prompt_embeds,
        negative_embeds=negative_embeds,
        images=decode(pipe, latents[-1]),
    )


def _batched_step(pipe, latents, t, prompt_embeds, negative_embeds, spec, generators, reduction):
    """One DDIM step for all images, in UNet calls of ``spec.images_per_call`` images: x_{t-1}
    (B, C, H, W) and its log-probability (B,)."""
    outputs = []
    for start in range(0, latents.shape[0], spec.images_per_call):
        chunk = slice(start, start + spec.images_per_call)
        x = latents[chunk]
        timestep = t.repeat(x.shape[0])
        noise_pred = guided_noise_prediction(
            pipe.unet, x, timestep, prompt_embeds[chunk], negative_embeds, spec.guidance_scale
        )
        outputs.append(
            ddim_step(
                pipe.scheduler,
                noise_pred,
                timestep,
                x,
                spec.eta,
                generator=generators[chunk],
                reduction=reduction,
            )
        )
    return torch.cat([o.prev_sample for o in outputs]), torch.cat([o.log_prob for o in outputs])


def _step_seed(group_seed: int, image_index: int) -> int:
    """A distinct, stable seed for the step noise of image k of a group."""
    return (group_seed * 1_000_003 + image_index + 1) % (2**63)


def recorded_step(
    unet,
    scheduler,
    trajectories: Trajectories,
    sample_index: torch.Tensor,
    step_index: torch.Tensor,
    spec: SamplerSpec,
    reduction: str = "mean",
) -> StepOutput:
    """The policy's Gaussian (mean, std) at recorded steps under ``unet`` as it is now, and the
    log pi(x_{t-1} | x_t) of the recorded actions, batched.

    ``sample_index`` and ``step_index`` are (N,) and pick N (image, step) items anywhere in the
    batch. Gradients flow when enabled: this is the training forward pass. Call it inside
    ``models.reference_policy(unet)`` and ``torch.no_grad()`` for the reference model.
    """
    if scheduler.num_inference_steps != spec.num_steps:  # e.g. training on saved trajectories
        scheduler.set_timesteps(spec.num_steps)
    latents = trajectories.latents
    device = latents.device
    sample_index, step_index = sample_index.to(device), step_index.to(device)
    x_t = latents[sample_index, step_index]  # (N, C, H, W)
    x_prev = latents[sample_index, step_index + 1]  # (N, C, H, W)
    timestep = trajectories.timesteps.to(device)[step_index]  # (N,)
    noise_pred = guided_noise_prediction(
        unet,
        x_t,
        timestep,
        trajectories.prompt_embeds[sample_index],
        trajectories.negative_embeds,
        spec.guidance_scale,
    )
    return ddim_step(
        scheduler, noise_pred, timestep, x_t, spec.eta, prev_sample=x_prev, reduction=reduction
    )


def concatenate(parts: list[Trajectories]) -> Trajectories:
    """One batch from several sampled one after the other (groups renumbered to stay apart)."""
    offsets = itertools.accumulate((int(part.groups.max()) + 1 for part in parts[:-1]), initial=0)

    def joined(name: str) -> torch.Tensor | None:
        values = [getattr(part, name) for part in parts]
        return None if values[0] is None else torch.cat(values)

    return Trajectories(
        prompts=[prompt for part in parts for prompt in part.prompts],
        groups=torch.cat(
            [part.groups + offset for part, offset in zip(parts, offsets, strict=True)]
        ),
        seeds=joined("seeds"),
        latents=joined("latents"),
        timesteps=parts[0].timesteps,
        log_probs=joined("log_probs"),
        prompt_embeds=joined("prompt_embeds"),
        negative_embeds=parts[0].negative_embeds,
        images=joined("images"),
        reference_log_probs=joined("reference_log_probs"),
    )


def save_trajectories(trajectories: Trajectories, path: Path) -> None:
    """Everything needed to train on these samples later (e.g. after people judged them)."""
    fields = vars(trajectories).items()
    torch.save({k: v.cpu() if torch.is_tensor(v) else v for k, v in fields}, path)


def load_trajectories(path: Path) -> Trajectories:
    if not Path(path).is_file():
        raise MissingFileError(
            f"{path} is missing: sample the set with `d3po sample --trajectories` to train on it"
        )
    fields = torch.load(path, map_location="cpu", weights_only=True)
    return Trajectories(**fields)
