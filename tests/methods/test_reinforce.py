"""ppo_np.reinforce, the worked "add a method" of docs/methods.md: the rewards, baseline, loss and gradient against
torch autograd of Williams' estimator written from its equations, the (B - 1)/B its batch-mean baseline costs (exact
enumeration), and the REINFORCETrainer: one AdamW step per batch whose gradient equals finite differences of the whole
batch's loss through the GPT, its registry entry, its checks, learning."""
import types

import numpy as np
import pytest
import torch

import minigpt_np as mg
from policy_gradcheck import (assert_matches_finite_differences, capture_gradients, group_batch, learn_token_reward,
                              make_models, perturb)
from ppo_np import METHODS
from ppo_np.batch import Batch, layout, response_logprobs
from ppo_np.reinforce import (REINFORCE, REINFORCEConfig, REINFORCETrainer, reinforce_loss, reinforce_loss_backward,
                              reinforce_prepare, reinforce_stats)
from ppo_np.rloo import rloo_advantages, rloo_rewards
from ppo_np.skeleton import Rollout

KL_COEF = 0.05


def williams_reinforce_loss(scores, logprobs, old_logprobs, ref_logprobs, mask, kl_coef):
    """Torch, from the equations: r = s - beta sum_t m (logpi_old - logpi_ref) (RLOO's reward), A = r - mean r,
    L = -1/B sum_i A_i sum_t m logpi (Williams 1992, with the batch mean as the baseline b)."""
    rewards = scores - kl_coef * ((old_logprobs - ref_logprobs) * mask).sum(1)
    advantages = rewards - rewards.mean()
    return -(advantages * (logprobs * mask).sum(1)).sum() / len(scores), advantages


def t64(x):
    return torch.tensor(np.asarray(x), dtype=torch.float64)


def right_padded_mask(lengths, T):
    return (np.arange(T)[None, :] < np.asarray(lengths)[:, None]).astype(np.float64)


def prepared(scores, logprobs, ref_logprobs, mask, kl_coef=KL_COEF):
    """reinforce_prepare on a rollout made of these arrays -> (advantages, stats)."""
    B, T = logprobs.shape
    batch = Batch(np.zeros((B, T + 1), dtype=np.int64), np.ones((B, T + 1), dtype=np.int64), mask, 1)
    trainer = types.SimpleNamespace(config=REINFORCEConfig(batch_size=B, forward_batch_size=B, mini_batch_size=B,
                                                           kl_coef=kl_coef))
    (advantages,), stats = reinforce_prepare(trainer, Rollout(batch, scores, logprobs, ref_logprobs, None))
    return advantages, stats


def test_rewards_baseline_loss_and_gradient_match_torch_autograd_of_williams_estimator():
    rng = np.random.default_rng(0)
    B, T = 8, 6
    mask = right_padded_mask([6, 1, 4, 6, 2, 5, 3, 6], T)
    logprobs, ref, scores = -rng.uniform(0.2, 3, (B, T)), -rng.uniform(0.2, 3, (B, T)), rng.normal(size=B)
    old = logprobs.copy()                                          # on-policy: the rollout's are the step's
    logprobs[mask == 0] = np.nan                                   # padding may hold anything
    advantages, stats = prepared(scores, old * mask, ref * mask, mask)
    loss, terms = reinforce_loss(logprobs, advantages, mask)
    dlogprobs = reinforce_loss_backward(terms)

    lp = t64(np.nan_to_num(logprobs)).requires_grad_(True)
    ref_loss, ref_advantages = williams_reinforce_loss(t64(scores), lp, t64(old), t64(ref), t64(mask), KL_COEF)
    ref_loss.backward()
    errors = {"advantages": np.abs(advantages - ref_advantages.detach().numpy()).max(),
              "loss": abs(loss - ref_loss.item()), "dlogprobs": np.abs(dlogprobs - lp.grad.numpy()).max(),
              "loss stat": abs(reinforce_stats(terms)["loss/policy"] - ref_loss.item())}
    print({k: f"{v:.1e}" for k, v in errors.items()})
    assert max(errors.values()) < 1e-14, errors
    assert np.all(dlogprobs[mask == 0] == 0.0) and abs(advantages.sum()) < 1e-14
    assert abs(stats["reinforce/mean_rlhf_reward"] - (scores - KL_COEF * ((old - ref) * mask).sum(1)).mean()) < 1e-14
    # negative control: RLOO's leave-one-out baseline over the same batch is told apart (it is B/(B-1) larger)
    loo = reinforce_loss_backward(reinforce_loss(logprobs, advantages * B / (B - 1), mask)[1])
    assert np.abs(loo - lp.grad.numpy()).max() > 1e-3


def test_the_batch_mean_advantage_is_rloos_over_the_whole_batch_times_b_minus_1_over_b():
    rng = np.random.default_rng(1)
    B, T = 6, 3
    logprobs, ref, scores = -rng.uniform(0.2, 3, (B, T)), -rng.uniform(0.2, 3, (B, T)), rng.normal(size=B)
    advantages, _ = prepared(scores, logprobs, ref, np.ones((B, T)))
    rewards, _ = rloo_rewards(scores, logprobs, ref, KL_COEF)
    assert np.abs(advantages - (B - 1) / B * rloo_advantages(rewards, B)).max() < 1e-14


def test_mini_batches_add_up_to_the_batch_loss():
    rng = np.random.default_rng(2)
    logprobs, advantages, mask = -rng.uniform(0.2, 3, (8, 5)), rng.normal(size=8), right_padded_mask([5, 2] * 4, 5)
    whole, whole_terms = reinforce_loss(logprobs, advantages, mask)
    parts = [reinforce_loss(logprobs[rows], advantages[rows], mask[rows], 8) for rows in np.split(np.arange(8), 4)]
    assert abs(sum(loss for loss, _ in parts) - whole) < 1e-15
    stacked = np.concatenate([reinforce_loss_backward(terms) for _, terms in parts])
    assert np.abs(stacked - reinforce_loss_backward(whole_terms)).max() == 0.0


def test_the_expected_gradient_is_the_policy_gradient_times_b_minus_1_over_b():
    """B one-token responses from pi = softmax(theta), every one of the V^B draws enumerated with its probability,
    beta = 0: E[-dL/dtheta] = (B - 1)/B grad E_pi[s]. The baseline's own term r_i/B is the cost."""
    rng = np.random.default_rng(3)
    V, B = 4, 3
    theta, s = rng.normal(size=V), rng.normal(size=V)
    pi = np.exp(theta) / np.exp(theta).sum()
    dlogpi_dtheta = np.eye(V) - pi                                  # row y: d log pi_y / d theta
    expected = np.zeros(V)
    for draw in np.ndindex(*(V,) * B):
        y = np.array(draw)
        advantages = s[y] - s[y].mean()
        dlogprobs = reinforce_loss_backward(reinforce_loss(np.log(pi[y])[:, None], advantages)[1])[:, 0]
        expected += np.prod(pi[y]) * (dlogprobs @ dlogpi_dtheta[y])
    policy_gradient = pi * (s - pi @ s)                              # grad E_pi[s]
    assert np.abs(-expected - (B - 1) / B * policy_gradient).max() < 1e-15
    assert np.abs(-expected - policy_gradient).max() > 1e-3


# ---------------------------------------------------------------------------------------------------------
# the trainer


def test_one_adamw_step_per_batch_whose_gradient_matches_finite_differences_of_the_batch_loss():
    """4 mini-batches of 2 rows add up into one AdamW step; its gradient against central differences of the whole
    batch's loss through the GPT (the advantages held at the step's: they come from the rollout)."""
    policy, ref = make_models()
    perturb(ref)                                                    # so that the KL penalty enters the rewards
    cfg = REINFORCEConfig(lr=1e-2, batch_size=8, forward_batch_size=4, mini_batch_size=2, kl_coef=0.5)
    trainer = REINFORCETrainer(policy, ref, cfg)
    captured, steps = capture_gradients(trainer), []
    capture = trainer.optimizer.step
    trainer.optimizer.step = lambda: (steps.append(1), capture())
    queries, responses, scores = group_batch(4, 2)
    stats = trainer.step(queries, responses, scores)
    assert len(steps) == 1 and stats["reinforce/mean_non_score_reward"] < -1e-3

    batch = layout(queries, responses)
    old, ref_logprobs = response_logprobs(policy, batch, 8), response_logprobs(ref, batch, 8)
    advantages, _ = prepared(scores, old, ref_logprobs, batch.mask, cfg.kl_coef)

    def objective():
        with mg.no_grad():
            return reinforce_loss(response_logprobs(policy, batch, 8), advantages, batch.mask)[0]

    assert_matches_finite_differences(policy, captured, objective)


def test_the_registry_entry_builds_the_trainer_and_bad_settings_are_refused():
    assert METHODS["reinforce"] is REINFORCE and REINFORCE.epochs is None
    policy, ref = make_models()
    assert isinstance(REINFORCE.trainer(policy, ref).config, REINFORCEConfig)
    cases = {
        "mini-batch": (lambda: REINFORCEConfig(batch_size=8, forward_batch_size=4, mini_batch_size=3),
                       "multiple of mini_batch_size"),
        "kl_coef": (lambda: REINFORCEConfig(kl_coef=-0.1), "REINFORCEConfig.kl_coef must be a finite number >= 0"),
        "lr": (lambda: REINFORCEConfig(lr=float("nan")), "REINFORCEConfig.lr"),
        "nan score": (lambda: REINFORCE.trainer(policy, ref, REINFORCEConfig(batch_size=2, forward_batch_size=2,
                                                                             mini_batch_size=2)).step(
            [np.array([1]), np.array([2])], [np.array([3]), np.array([4])], np.array([0.0, np.nan])),
            r"scores at rows \[1\] are nan or inf"),
    }
    for name, (call, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            call()
            pytest.fail(f"{name}: no ValueError")
    # the loss asserts its shapes in one line; the rest is the boundary's (the config, Trainer.step)
    with pytest.raises(AssertionError):
        reinforce_loss(np.zeros((4, 2)), np.zeros(3))


def test_reinforce_learns_a_token_level_reward():
    """Reward = fraction of response tokens equal to 7, one response per prompt: REINFORCE must raise it well above
    the reference's 1/13, one AdamW step per batch."""
    cfg = mg.GPTConfig(vocab_size=13, block_size=12, n_layer=2, n_head=2, n_embd=16)
    trainer = REINFORCETrainer(mg.GPT(cfg, seed=0), mg.GPT(cfg, seed=0),
                               REINFORCEConfig(lr=1e-2, batch_size=32, forward_batch_size=16, mini_batch_size=8,
                                               kl_coef=0.01))
    first, last, elapsed = learn_token_reward(trainer, k=1, steps=30, n_prompts=32)
    print(f"reward {first:.3f} -> {last:.3f} in {elapsed:.1f} s")
    assert first < 0.2 and last > 0.6, f"reward went from {first:.3f} to {last:.3f}"


def test_the_walkthrough_quotes_the_code_word_for_word():
    """Every code block of docs/methods.md section 7 stands, as written, in ppo_np/reinforce.py or ppo_np/__init__.py;
    and it quotes every line of the registry's entry."""
    from test_docs_numbers import ROOT
    text = (ROOT / "docs" / "methods.md").read_text()
    section = text[text.index("## 7. Adding a method"):text.index("## 8. One comparison")]
    blocks = section.split("```python\n")[1:]
    blocks = [block[:block.index("```")] for block in blocks]
    sources = [(ROOT / "ppo_np" / name).read_text() for name in ("reinforce.py", "__init__.py")]
    missing = [block for block in blocks if not any(block in source for source in sources)]
    assert len(blocks) >= 7 and not missing, missing
    assert any("METHODS = {" in block and '"reinforce": REINFORCE' in block for block in blocks)
