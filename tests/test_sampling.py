"""The policy: DDIM step means against diffusers, log-probs against torch.distributions."""

from __future__ import annotations

import pytest
import scipy.stats
import torch
from diffusers import DDIMScheduler

from d3po.sampling import ddim_step, gaussian_log_prob, recorded_step, sample


def make_scheduler(**overrides) -> DDIMScheduler:
    config = dict(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    scheduler = DDIMScheduler(**(config | overrides))
    scheduler.set_timesteps(20)
    return scheduler


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gaussian_log_prob_matches_scipy(reduction):
    generator = torch.Generator().manual_seed(0)
    x, mean = (
        torch.randn(3, 4, 5, 5, generator=generator),
        torch.randn(3, 4, 5, 5, generator=generator),
    )
    std = torch.tensor([0.3, 1.0, 2.0]).reshape(3, 1, 1, 1)
    expected = scipy.stats.norm.logpdf(x.double(), mean.double(), std.double()).reshape(3, -1)
    expected = expected.mean(1) if reduction == "mean" else expected.sum(1)
    torch.testing.assert_close(
        gaussian_log_prob(x, mean, std, reduction), torch.tensor(expected).float()
    )


def test_gaussian_log_prob_of_a_nan_mean_is_nan_not_an_error():
    """A diverging model's NaN must reach the loss (torch.distributions would raise instead)."""
    x = torch.zeros(2, 3)
    mean = torch.tensor([[0.0, 0.0, 0.0], [float("nan"), 0.0, 0.0]])
    log_prob = gaussian_log_prob(x, mean, torch.ones(2, 1))
    assert torch.isfinite(log_prob[0]) and torch.isnan(log_prob[1])


@pytest.mark.parametrize("eta", [1.0, 0.5])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("clip_sample", [False, True])
def test_step_mean_matches_diffusers_ddim(eta, prediction_type, clip_sample):
    scheduler = make_scheduler(prediction_type=prediction_type, clip_sample=clip_sample)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    model_output = torch.randn(2, 4, 8, 8, generator=generator)
    for t in scheduler.timesteps[[0, 7, 19]]:  # first, middle and last step (prev_t < 0)
        expected = scheduler.step(
            model_output, t, x, eta=eta, variance_noise=torch.zeros_like(x)
        ).prev_sample
        ours = ddim_step(scheduler, model_output, t.repeat(2), x, eta, prev_sample=x)
        torch.testing.assert_close(ours.mean, expected, rtol=1e-5, atol=1e-5)
        expected_std = eta * scheduler._get_variance(t, t - 50) ** 0.5
        torch.testing.assert_close(ours.std.flatten(), expected_std.float().repeat(2))


def test_step_log_prob_is_the_gaussian_density_of_the_action():
    scheduler = make_scheduler()
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, 8, 8, generator=generator)
    model_output = torch.randn(3, 4, 8, 8, generator=generator)
    timesteps = scheduler.timesteps[[2, 9, 15]]  # three different steps in one batch
    action = torch.randn(3, 4, 8, 8, generator=generator)
    ours = ddim_step(scheduler, model_output, timesteps, x, 1.0, prev_sample=action)
    for i, t in enumerate(timesteps):
        mean = scheduler.step(
            model_output[i : i + 1],
            t,
            x[i : i + 1],
            eta=1.0,
            variance_noise=torch.zeros_like(x[i : i + 1]),
        ).prev_sample
        std = scheduler._get_variance(t, t - 50) ** 0.5
        expected = torch.distributions.Normal(mean, std).log_prob(action[i : i + 1]).mean()
        torch.testing.assert_close(ours.log_prob[i], expected.float(), rtol=1e-4, atol=1e-4)


def test_fresh_action_is_distributed_around_the_mean():
    scheduler = make_scheduler()
    x = torch.zeros(4000, 1, 1, 1)
    model_output = torch.zeros_like(x)
    t = scheduler.timesteps[5].repeat(4000)
    step = ddim_step(scheduler, model_output, t, x, 1.0)
    residual = (step.prev_sample - step.mean) / step.std
    assert abs(residual.mean().item()) < 0.1
    assert abs(residual.std().item() - 1.0) < 0.05


def test_groups_share_initial_noise_then_diverge(tiny_pipe, sampler):
    trajectories = sample(tiny_pipe, ["a red circle", "a blue square"], 3, [11, 12], sampler)
    latents = trajectories.latents  # (6, T + 1, 3, 16, 16)
    assert latents.shape == (6, sampler.num_steps + 1, 3, 16, 16)
    assert torch.equal(latents[0, 0], latents[2, 0])
    assert not torch.equal(latents[0, 0], latents[3, 0])
    assert not torch.allclose(latents[0, 1], latents[1, 1])
    assert trajectories.groups.tolist() == [0, 0, 0, 1, 1, 1]
    assert trajectories.images.min() >= 0 and trajectories.images.max() <= 1


def test_sampling_is_reproducible_and_batch_independent(tiny_pipe, sampler):
    both = sample(tiny_pipe, ["a red circle", "a blue square"], 2, [11, 12], sampler)
    alone = sample(tiny_pipe, ["a blue square"], 2, [12], sampler)
    torch.testing.assert_close(alone.latents, both.latents[2:])
    torch.testing.assert_close(alone.log_probs, both.log_probs[2:])


def test_recomputed_log_probs_equal_recorded_ones(tiny_pipe, sampler):
    trajectories = sample(tiny_pipe, ["a red circle", "a blue square"], 2, [3, 4], sampler)
    steps = sampler.num_steps
    sample_index = torch.arange(4).repeat_interleave(steps)
    step_index = torch.arange(steps).repeat(4)
    with torch.no_grad():
        recomputed = recorded_step(
            tiny_pipe.unet, tiny_pipe.scheduler, trajectories, sample_index, step_index, sampler
        ).log_prob
    torch.testing.assert_close(
        recomputed, trajectories.log_probs[sample_index, step_index], rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_half_precision_weights_sample_without_autocast(sampler, guidance_scale):
    from dataclasses import replace

    from d3po.models import ModelSpec, load_pipeline

    pipe = load_pipeline(ModelSpec(source="tiny-random", seed=0))  # a copy of its own to cast
    pipe.unet.to(torch.bfloat16)
    pipe.text_encoder.to(torch.bfloat16)
    spec = replace(sampler, num_steps=2, guidance_scale=guidance_scale)
    trajectories = sample(pipe, ["a red circle"], 2, [1], spec)
    assert torch.isfinite(trajectories.log_probs).all()


def test_eta_zero_is_refused(tiny_pipe, sampler):
    from dataclasses import replace

    with pytest.raises(ValueError, match="eta"):
        sample(tiny_pipe, ["a red circle"], 2, [0], replace(sampler, eta=0.0))


@pytest.mark.parametrize("set_alpha_to_one", [False, True])
def test_last_step_has_a_finite_log_prob_with_either_final_alpha(set_alpha_to_one):
    """The last step goes to timestep 0 (as the reference code clamps it), so sigma_t > 0 even
    when the scheduler's final alpha is 1."""
    scheduler = make_scheduler(set_alpha_to_one=set_alpha_to_one)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    model_output = torch.randn(2, 4, 8, 8, generator=generator)
    last = scheduler.timesteps[-1].repeat(2)
    step = ddim_step(scheduler, model_output, last, x, 1.0)
    assert torch.all(step.std > 0)
    assert torch.isfinite(step.log_prob).all()
    scored = ddim_step(scheduler, model_output, last, x, 1.0, prev_sample=step.prev_sample)
    torch.testing.assert_close(scored.log_prob, step.log_prob)
    alpha_0 = scheduler.alphas_cumprod[0]
    alpha_t = scheduler.alphas_cumprod[last[0]]
    expected_std = ((1 - alpha_0) / (1 - alpha_t) * (1 - alpha_t / alpha_0)).sqrt()
    torch.testing.assert_close(step.std.flatten(), expected_std.float().repeat(2))
