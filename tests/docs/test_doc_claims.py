"""Three statements of the docs that are facts about the math, each checked exactly:

- the adaptive KL controller's largest moves over one horizon (ppo_np/core.py::AdaptiveKLController, docs/ppo.md
  section 10): within [(1 - 0.2 n/H)^(H/n), (1 + 0.2 n/H)^(H/n)], so the fall can exceed 1 - e^-0.2;
- best-of-n's KL is at most log n - (n - 1)/n, and strictly below it on a discrete reference even when no two
  responses score alike (docs/ppo.md section 16, minichatgpt/loop/best_of_n.py::kl_best_of_n);
- GRPO's loss is 0 at the first step only when the loss covers whole groups (docs/methods.md section 3).
"""
import itertools
import math

import numpy as np

from minichatgpt.loop import best_of_n
from ppo_np import grpo
from ppo_np.core import AdaptiveKLController


# ---------------------------------------------------------------------------------------------- the KL controller


def compounded_factor(kl, n, horizon, updates):
    """value after `updates` updates of n samples each, from 1, with the measured KL held at `kl` (target 6)."""
    controller = AdaptiveKLController(1.0, 6.0, horizon)
    for _ in range(updates):
        controller.update(kl, n)
    return controller.value


def test_the_controllers_largest_fall_over_a_horizon_exceeds_e_to_the_minus_0_2_and_its_rise_stays_below_e_to_0_2():
    for n, horizon in ((100, 10000), (64, 6400), (1000, 10000), (10000, 10000)):
        m = horizon // n                                                 # one horizon of updates
        rise, fall = compounded_factor(60.0, n, horizon, m), compounded_factor(0.0, n, horizon, m)  # e = +0.2, -0.2
        assert abs(rise - (1 + 0.2 * n / horizon) ** m) < 1e-12 and abs(fall - (1 - 0.2 * n / horizon) ** m) < 1e-12
        print(f"n={n}, H={horizon}: rise {rise - 1:+.4%}, fall {fall - 1:+.4%}")
        assert rise < math.exp(0.2) and fall < math.exp(-0.2), (n, horizon, rise, fall)
    # one update per horizon: exactly +20% and -20%
    assert abs(compounded_factor(60.0, 10000, 10000, 1) - 1.2) < 1e-15
    assert abs(compounded_factor(0.0, 10000, 10000, 1) - 0.8) < 1e-15
    # the class docstring's example, n = 100, H = 10000: a fall of 18.14%, more than the 18.13% of e^-0.2
    assert round(1 - compounded_factor(0.0, 100, 10000, 100), 4) == 0.1814 and round(1 - math.exp(-0.2), 4) == 0.1813


# ---------------------------------------------------------------------------------------------- best-of-n's KL


def best_of_n_distribution(p, reward, n):
    """P(the best of n draws from p is y), by enumerating every ordered n-tuple of draws (the same response may be
    drawn more than once). p, reward (K,) -> (K,)."""
    p_bon = np.zeros_like(p)
    for draws in itertools.product(range(len(p)), repeat=n):
        p_bon[max(draws, key=lambda y: reward[y])] += np.prod(p[list(draws)])
    return p_bon


def test_best_of_n_kl_is_strictly_below_log_n_minus_n_minus_1_over_n_on_a_discrete_reference_with_distinct_rewards():
    # two equally likely responses, n = 2: best-of-2 picks the better one with probability 3/4
    p_bon = best_of_n_distribution(np.array([0.5, 0.5]), np.array([0.0, 1.0]), 2)
    assert np.allclose(p_bon, [0.25, 0.75], atol=1e-15)
    exact = float(np.sum(p_bon * np.log(p_bon / 0.5)))
    print(f"K=2, n=2: exact {exact:.4f}, formula {best_of_n.kl_best_of_n(2):.4f}")
    assert round(exact, 3) == 0.131 and round(best_of_n.kl_best_of_n(2), 3) == 0.193

    rng = np.random.default_rng(0)
    for K, n in ((3, 2), (4, 3), (5, 4), (6, 2)):
        p = rng.dirichlet(np.ones(K))
        reward = rng.permutation(K).astype(float)                   # distinct: no two responses score alike
        p_bon = best_of_n_distribution(p, reward, n)
        exact = float(np.sum(p_bon * np.log(p_bon / p)))
        assert abs(p_bon.sum() - 1) < 1e-12
        assert 0 < exact < best_of_n.kl_best_of_n(n) - 1e-3, (K, n, exact)
    # n = 1 moves nothing, and the gap closes as the reference's mass spreads over more responses (K uniform
    # responses, n = 4): the formula is the limit of a continuous score
    gaps = []
    for K in (4, 16, 64, 256):
        cdf = np.arange(1, K + 1) / K
        p_bon = cdf ** 4 - np.concatenate([[0.0], cdf[:-1]]) ** 4
        gaps.append(best_of_n.kl_best_of_n(4) - float(np.sum(p_bon * np.log(p_bon * K))))
    assert best_of_n.kl_best_of_n(1) == 0.0
    assert all(a > b > 0 for a, b in zip(gaps, gaps[1:])) and gaps[-1] < 0.01, gaps


# ---------------------------------------------------------------------------------------------- GRPO at ratio 1


def test_grpo_loss_is_zero_at_the_first_step_only_over_whole_groups():
    """At pi = pi_old = pi_ref ("grpo" loss type): a batch of whole groups has loss -1/B sum_i A_i = 0, a mini-batch
    that splits groups has -1/|rows| sum_{i in rows} A_i, not 0, though every ratio is 1."""
    rng = np.random.default_rng(0)
    G, groups, T = 8, 4, 5
    B = G * groups
    advantages = grpo.grpo_advantages(rng.normal(size=B), G)
    logprobs = -rng.uniform(0.5, 3.0, (B, T))
    mask = (np.arange(T)[None, :] < rng.integers(1, T + 1, B)[:, None]).astype(float)

    def first_step_loss(rows):
        loss, _ = grpo.grpo_loss(logprobs[rows], logprobs[rows], logprobs[rows], advantages[rows], mask[rows],
                                 beta=0.04, epsilon=0.2, loss_type="grpo")
        return loss

    whole = np.arange(B)
    two_groups = np.arange(2 * G)                                          # rows 0..15: groups 0 and 1, whole
    split = np.sort(rng.permutation(B)[:2 * G])                            # 16 rows drawn as a shuffle draws them
    assert abs(first_step_loss(whole)) < 1e-15 and abs(first_step_loss(two_groups)) < 1e-15
    assert abs(first_step_loss(split) - -advantages[split].mean()) < 1e-15
    print(f"first-step loss over 16 shuffled rows: {first_step_loss(split):.3f}")
    assert abs(first_step_loss(split)) > 1e-3                             # 0.019 here; a whole batch: < 1e-15
