"""D3PO and PPO losses on hand-made numbers, against independent formulas and gradient signs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from d3po.methods.d3po import d3po_loss
from d3po.methods.ddpo import PerPromptStatTracker, ppo_clip_loss


def reference_d3po(pw, rw, pl, rl, beta, eps):
    """The paper's formula, written with ratios: -log sigmoid(beta (log r_w - log r_l))."""
    ratio_w = min(max(math.exp(pw - rw), 1 - eps), 1 + eps)
    ratio_l = min(max(math.exp(pl - rl), 1 - eps), 1 + eps)
    z = beta * (math.log(ratio_w) - math.log(ratio_l))
    return -math.log(1 / (1 + math.exp(-z)))


@pytest.mark.parametrize(
    "pw, rw, pl, rl",
    [
        (0.0, 0.0, 0.0, 0.0),
        (-1.00, -1.05, -2.0, -1.97),
        (0.5, 0.0, -0.5, 0.0),
        (-3.0, -3.01, -2.0, -2.0),
    ],
)
def test_d3po_loss_matches_the_formula(pw, rw, pl, rl):
    loss, _ = d3po_loss(*(torch.tensor([v]) for v in (pw, rw, pl, rl)), beta=2.0, eps=0.1)
    assert loss.item() == pytest.approx(reference_d3po(pw, rw, pl, rl, 2.0, 0.1), rel=1e-6)


def test_at_the_reference_the_loss_is_log_two():
    zeros = torch.zeros(5)
    loss, diagnostics = d3po_loss(zeros, zeros, zeros, zeros, beta=0.1, eps=0.1)
    torch.testing.assert_close(loss, torch.full((5,), math.log(2.0)))
    assert diagnostics["clip_fraction"].item() == 0.0


def test_gradient_raises_the_winner_and_lowers_the_loser():
    policy_winner = torch.tensor([-1.0, -2.0], requires_grad=True)
    policy_loser = torch.tensor([-1.5, -0.5], requires_grad=True)
    reference = torch.tensor([-1.02, -2.01]), torch.tensor([-1.49, -0.52])
    loss, _ = d3po_loss(policy_winner, reference[0], policy_loser, reference[1], 0.1, 0.1)
    loss.sum().backward()
    assert (policy_winner.grad < 0).all()  # descent increases log pi(winner)
    assert (policy_loser.grad > 0).all()  # and decreases log pi(loser)


def test_the_clamp_cuts_the_gradient_outside_the_band():
    eps = 0.1
    # winner ratio e^0.5 > 1 + eps, loser ratio e^-0.01 inside the band
    policy_winner = torch.tensor([0.5], requires_grad=True)
    policy_loser = torch.tensor([-0.01], requires_grad=True)
    loss, diagnostics = d3po_loss(
        policy_winner, torch.zeros(1), policy_loser, torch.zeros(1), beta=1.0, eps=eps
    )
    loss.sum().backward()
    assert policy_winner.grad.item() == 0.0
    assert policy_loser.grad.item() > 0.0
    assert diagnostics["clip_fraction"].item() == 0.5


def reference_ppo(log_prob, old, advantage, clip):
    ratio = math.exp(log_prob - old)
    return max(-advantage * ratio, -advantage * min(max(ratio, 1 - clip), 1 + clip))


@pytest.mark.parametrize("advantage", [2.0, -1.5])
@pytest.mark.parametrize("log_ratio", [0.0, 0.05, -0.05, 1e-5])
def test_ppo_loss_matches_the_formula(advantage, log_ratio):
    loss, _ = ppo_clip_loss(
        torch.tensor([log_ratio - 1.0]), torch.tensor([-1.0]), torch.tensor([advantage]), 1e-4
    )
    expected = reference_ppo(log_ratio - 1.0, -1.0, advantage, 1e-4)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_ppo_gradient_follows_the_advantage_and_stops_when_clipped():
    log_prob = torch.tensor([-1.0, -1.0, -0.5, -1.5], requires_grad=True)
    old = torch.tensor([-1.0, -1.0, -1.0, -1.0])
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, diagnostics = ppo_clip_loss(log_prob, old, advantages, clip_range=0.2)
    loss.sum().backward()
    assert log_prob.grad[0] < 0 and log_prob.grad[1] > 0  # at ratio 1: follow the advantage
    assert log_prob.grad[2] == 0 and log_prob.grad[3] == 0  # outside the clip: no push further
    assert diagnostics["clip_fraction"].item() == 0.5


def test_per_prompt_advantages_use_the_batch_until_min_count_then_the_buffer():
    tracker = PerPromptStatTracker(buffer_size=4, min_count=4)
    first = tracker.advantages(["a", "a", "b", "b"], np.array([1.0, 3.0, 10.0, 10.0]))
    batch = np.array([1.0, 3.0, 10.0, 10.0])
    np.testing.assert_allclose(first, (batch - batch.mean()) / (batch.std() + 1e-6))
    tracker.advantages(["a", "a"], np.array([5.0, 7.0]))  # buffer "a" = 1, 3, 5, 7
    third = tracker.advantages(["a"], np.array([9.0]))  # buffer "a" = 3, 5, 7, 9
    buffer = np.array([3.0, 5.0, 7.0, 9.0])
    np.testing.assert_allclose(third, (9.0 - buffer.mean()) / (buffer.std() + 1e-6))


def test_tracker_state_round_trips():
    tracker = PerPromptStatTracker(buffer_size=3, min_count=1)
    tracker.advantages(["a", "b"], np.array([1.0, 2.0]))
    copy = PerPromptStatTracker(buffer_size=3, min_count=1)
    copy.load_state_dict(tracker.state_dict())
    np.testing.assert_allclose(
        copy.advantages(["a"], np.array([4.0])), tracker.advantages(["a"], np.array([4.0]))
    )


# --------------------------------------------------------------------------- the baselines


def test_gaussian_kl_matches_torch_distributions():
    from torch.distributions import Normal, kl_divergence

    from d3po.methods.dpok import gaussian_kl

    policy_mean = torch.tensor([[[0.5, -1.0], [2.0, 0.0]]])  # (1, 2, 2)
    reference_mean = torch.tensor([[[0.0, -1.5], [1.0, 0.25]]])
    std = torch.tensor([[[0.5]]])
    per_dimension = kl_divergence(Normal(policy_mean, std), Normal(reference_mean, std))
    kl_mean = gaussian_kl(policy_mean, reference_mean, std, "mean")
    kl_sum = gaussian_kl(policy_mean, reference_mean, std, "sum")
    torch.testing.assert_close(kl_mean, per_dimension.mean(dim=(1, 2)))
    torch.testing.assert_close(kl_sum, per_dimension.sum(dim=(1, 2)))
    # by hand: squared distances 0.25, 0.25, 1, 0.0625 over 2 sigma^2 = 0.5
    assert kl_sum.item() == pytest.approx((0.25 + 0.25 + 1 + 0.0625) / 0.5)


def test_dpok_loss_is_the_weighted_policy_gradient_plus_the_kl():
    from d3po.methods.dpok import dpok_loss

    log_prob, old, advantage, kl = -1.0 + 3e-5, -1.0, 2.0, 0.4
    loss, diagnostics = dpok_loss(
        torch.tensor([log_prob]),
        torch.tensor([old]),
        torch.tensor([advantage]),
        torch.tensor([kl]),
        clip_range=1e-4,
        reward_weight=10.0,
        kl_weight=0.01,
    )
    expected = 10.0 * reference_ppo(log_prob, old, advantage, 1e-4) + 0.01 * kl
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert diagnostics["kl"].item() == pytest.approx(kl)


def test_weighted_denoising_loss_on_hand_numbers():
    from d3po.methods.reward_weighted import weighted_denoising_loss

    prediction = torch.tensor([[1.0, 2.0], [0.0, 0.0]])  # (2 items, 2 dimensions)
    target = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    loss, diagnostics = weighted_denoising_loss(prediction, target, torch.tensor([0.5, 2.0]))
    # mean squared errors: (1 + 4) / 2 = 2.5 and (1 + 1) / 2 = 1
    torch.testing.assert_close(loss, torch.tensor([0.5 * 2.5, 2.0 * 1.0]))
    assert diagnostics["denoising_mse"].item() == pytest.approx(1.75)


def test_reward_weights_are_the_sigmoid_of_standardised_rewards():
    from d3po.methods.reward_weighted import reward_weights

    weights = reward_weights(np.array([1.0, 2.0, 3.0]))
    z = 1 / math.sqrt(2 / 3)  # (3 - 2) / population std
    expected = [1 / (1 + math.exp(z)), 0.5, 1 / (1 + math.exp(-z))]
    assert weights.tolist() == pytest.approx(expected, rel=1e-5)


def test_a_judged_image_weighs_the_share_of_comparisons_it_won():
    from d3po.methods.reward_weighted import win_shares

    pairs = torch.tensor([[0, 1], [0, 2], [2, 1]])  # winner, loser; image 3 never decided
    assert win_shares(pairs, 4).tolist() == [1.0, 0.0, 0.5, 0.0]
