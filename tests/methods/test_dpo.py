"""ppo_np.dpo against torch autograd of the DPO authors' `preference_loss` and `_get_batch_logps`, identical pairs,
make_pairs, and the DPOTrainer: the gradient it applies against finite differences through the whole GPT, its
checks, learning from pairs of reference samples."""
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import minigpt_np as mg
from policy_gradcheck import assert_matches_finite_differences, capture_gradients, make_models, perturb
from ppo_np.batch import layout, response_logprobs
from ppo_np.core import logprobs_from_logits, logprobs_from_logits_backward
from ppo_np.dpo import DPOConfig, DPOTrainer, dpo_loss, dpo_loss_backward, dpo_stats, make_pairs
from ppo_np.rollout import generate_responses

BETA = 0.1


# ---------------------------------------------------------------------------------------------------------
# torch references: github.com/eric-mitchell/direct-preference-optimization, trainers.py at commit f8b8c0f4
# (lines 45-115), docstrings dropped; and the metrics of BasicTrainer.get_batch_metrics (lines 248-265)


def preference_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                    beta, label_smoothing=0.0, ipo=False, reference_free=False):
    pi_logratios = policy_chosen_logps - policy_rejected_logps
    ref_logratios = reference_chosen_logps - reference_rejected_logps

    if reference_free:
        ref_logratios = 0

    logits = pi_logratios - ref_logratios  # also known as h_{\pi_\theta}^{y_w,y_l}

    if ipo:
        losses = (logits - 1/(2 * beta)) ** 2  # Eq. 17 of https://arxiv.org/pdf/2310.12036v2.pdf
    else:
        # Eq. 3 https://ericmitchell.ai/cdpo.pdf; label_smoothing=0 gives original DPO (Eq. 7 of https://arxiv.org/pdf/2305.18290.pdf)
        losses = -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing

    chosen_rewards = beta * (policy_chosen_logps - reference_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - reference_rejected_logps).detach()

    return losses, chosen_rewards, rejected_rewards


def _get_batch_logps(logits, labels, average_log_prob=False):
    assert logits.shape[:-1] == labels.shape

    labels = labels[:, 1:].clone()
    logits = logits[:, :-1, :]
    loss_mask = (labels != -100)

    # dummy token; we'll ignore the losses on these tokens later
    labels[labels == -100] = 0

    per_token_logps = torch.gather(logits.log_softmax(-1), dim=2, index=labels.unsqueeze(2)).squeeze(2)

    if average_log_prob:
        return (per_token_logps * loss_mask).sum(-1) / loss_mask.sum(-1)
    else:
        return (per_token_logps * loss_mask).sum(-1)


def authors_metrics(losses, chosen_rewards, rejected_rewards, policy_chosen_logps, policy_rejected_logps):
    """get_batch_metrics' train metrics, each a list per pair there; averaged here as a logger would."""
    reward_accuracies = (chosen_rewards > rejected_rewards).float()
    return {"rewards_train/chosen": chosen_rewards.mean(), "rewards_train/rejected": rejected_rewards.mean(),
            "rewards_train/accuracies": reward_accuracies.mean(),
            "rewards_train/margins": (chosen_rewards - rejected_rewards).mean(),
            "logps_train/rejected": policy_rejected_logps.detach().mean(),
            "logps_train/chosen": policy_chosen_logps.detach().mean(), "loss/train": losses.detach().mean()}


def t64(x):
    return torch.tensor(np.asarray(x), dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------------
# the loss


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_loss_gradient_and_stats_match_torch_autograd_of_the_authors_code(label_smoothing):
    rng = np.random.default_rng(0)
    P = 16
    logps = [-rng.uniform(5, 40, P) for _ in range(4)]
    logps[0][:4] += 300.0                              # beta h = +30: saturated, the right way round
    logps[0][4:8] -= 300.0                             # beta h = -30: saturated, the wrong way round
    loss, terms = dpo_loss(*logps, BETA, label_smoothing)
    grads = dpo_loss_backward(terms)
    stats = dpo_stats(terms)
    pc, pr = t64(logps[0]).requires_grad_(True), t64(logps[1]).requires_grad_(True)
    losses, chosen_rewards, rejected_rewards = preference_loss(pc, pr, t64(logps[2]), t64(logps[3]), BETA,
                                                               label_smoothing)
    losses.mean().backward()
    reference = authors_metrics(losses, chosen_rewards, rejected_rewards, pc, pr)
    errors = {"loss": abs(loss - losses.mean().item()), "dchosen": np.abs(grads["chosen"] - pc.grad.numpy()).max(),
              "drejected": np.abs(grads["rejected"] - pr.grad.numpy()).max(),
              **{key: abs(stats[key] - reference[key].item()) for key in reference}}
    print({k: f"{v:.1e}" for k, v in errors.items()})
    assert max(errors.values()) < 1e-12, errors
    assert 0 < stats["rewards_train/accuracies"] < 1
    # negative control: a gradient with the sign of the rejected side flipped is told apart
    assert np.abs(grads["chosen"] - grads["rejected"]).max() > 1e-3


@pytest.mark.parametrize("masked", [False, True])
def test_per_token_gradient_chained_to_the_logits_matches_autograd_from_the_logits(masked):
    """Sequence log-probabilities as the authors compute them (_get_batch_logps on labels with -100 on the prompt and
    the padding), the loss, and dL/dlogits; ours: logprobs_from_logits, the masked sum, dpo_loss, the per-pair
    gradient spread over each response's tokens, logprobs_from_logits_backward."""
    rng = np.random.default_rng(1)
    P, Q, T, V = 4, 2, 5, 9                                  # 2P rows: the chosen responses, then the rejected
    logits = 2.0 * rng.normal(size=(2 * P, Q + T, V))
    tokens = rng.integers(0, V, size=(2 * P, Q + T))
    lengths = np.array([5, 2, 4, 1, 3, 5, 1, 2]) if masked else np.full(2 * P, T)
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float64)
    ref_logps = -rng.uniform(2, 10, 2 * P)

    labels = torch.tensor(tokens)
    labels[:, :Q] = -100
    labels[:, Q:][torch.tensor(mask == 0)] = -100
    lt = t64(logits).requires_grad_(True)
    all_logps = _get_batch_logps(lt, labels)
    losses, _, _ = preference_loss(all_logps[:P], all_logps[P:], t64(ref_logps[:P]), t64(ref_logps[P:]), BETA)
    losses.mean().backward()

    response_logits, response_labels = logits[:, Q - 1:-1], tokens[:, Q:]
    logps = (logprobs_from_logits(response_logits, response_labels) * mask).sum(axis=1)
    loss, terms = dpo_loss(logps[:P], logps[P:], ref_logps[:P], ref_logps[P:], BETA)
    grads = dpo_loss_backward(terms)
    dlogprobs = np.concatenate([grads["chosen"], grads["rejected"]])[:, None] * mask
    dlogits = np.zeros_like(logits)
    dlogits[:, Q - 1:-1] = logprobs_from_logits_backward(response_logits, response_labels, dlogprobs)
    err = np.abs(dlogits - lt.grad.numpy()).max()
    print(f"loss error {abs(loss - losses.mean().item()):.1e}, dlogits error {err:.1e}")
    assert abs(loss - losses.mean().item()) < 1e-12 and err < 1e-12


def test_a_pair_of_identical_responses_has_loss_log_2_and_no_gradient():
    logps = np.array([-7.3, -2.0])
    ref = np.array([-6.1, -2.5])
    loss, terms = dpo_loss(logps, logps, ref, ref, BETA)
    grads = dpo_loss_backward(terms)
    assert abs(loss - np.log(2)) < 1e-15
    # on the tokens the chosen and the rejected copy share, the two per-pair gradients cancel exactly
    assert np.all(grads["chosen"] + grads["rejected"] == 0.0)


def test_bad_pairs_are_refused_where_their_scores_enter_and_the_loss_asserts_its_shapes():
    """make_pairs is where the proxy's scores enter DPO, and checks them; dpo_loss checks its four arrays' shapes in
    one line, and leaves beta and label_smoothing to DPOConfig (test_step_refuses_bad_batches)."""
    one = np.zeros(3)
    cases = {
        "pairs not (P, 2)": (lambda: make_pairs(np.zeros((3, 3)), np.random.default_rng(0)), r"\(P, 2\)"),
        "nan score": (lambda: make_pairs(np.array([[0.0, np.nan]]), np.random.default_rng(0)), "nan"),
    }
    for name, (call, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            call()
            pytest.fail(f"{name}: no ValueError")
    for bad in ((one, one[:2], one, one), [np.zeros((3, 2))] * 4):
        with pytest.raises(AssertionError):
            dpo_loss(*bad, BETA)


# ---------------------------------------------------------------------------------------------------------
# pairs


def test_make_pairs_chooses_the_higher_score_and_flips_a_fair_coin_on_ties():
    rng = np.random.default_rng(0)
    scores = np.array([[0.3, 0.1], [-1.0, 2.0], [5.0, 5.0]])
    picks = make_pairs(np.tile(scores, (4000, 1)), rng).reshape(4000, 3)
    assert np.all(picks[:, 0] == 0) and np.all(picks[:, 1] == 1)
    assert abs(picks[:, 2].mean() - 0.5) < 0.03, "a tie must not favour a position"


def test_make_pairs_bradley_terry_labels_follow_sigmoid_of_the_score_difference():
    rng = np.random.default_rng(1)
    scores = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    first_chosen = np.mean(make_pairs(np.tile(scores, (20000, 1)), rng, bradley_terry=True).reshape(20000, 3) == 0,
                           axis=0)
    expected = 1 / (1 + np.exp(-(scores[:, 0] - scores[:, 1])))          # 0.731, 0.119, 0.5
    assert np.abs(first_chosen - expected).max() < 0.015, (first_chosen, expected)


# ---------------------------------------------------------------------------------------------------------
# the trainer


def pair_batch(P, seed=0):
    rng = np.random.default_rng(seed)
    queries = [rng.integers(1, 13, rng.integers(1, 5)) for _ in range(P)]
    chosen = [rng.integers(1, 13, rng.integers(1, 6)) for _ in range(P)]
    rejected = [rng.integers(1, 13, rng.integers(1, 6)) for _ in range(P)]
    return queries, chosen, rejected


def test_gradient_applied_by_the_trainer_matches_finite_differences_of_the_dpo_loss():
    policy, ref = make_models()
    perturb(policy, scale=0.3)                  # away from the reference, so that h differs from pair to pair
    cfg = DPOConfig(lr=1e-2, beta=0.5, label_smoothing=0.1, batch_size=4, forward_batch_size=4, mini_batch_size=4)
    trainer = DPOTrainer(policy, ref, cfg)
    queries, chosen, rejected = pair_batch(4)
    batch = layout(queries + queries, chosen + rejected)
    ref_logps = (response_logprobs(ref, batch, 8) * batch.mask).sum(axis=1)
    captured = capture_gradients(trainer)
    trainer.train_minibatch(batch, ref_logps[:4], ref_logps[4:])

    def objective():
        with mg.no_grad():
            logps = (response_logprobs(policy, batch, 8) * batch.mask).sum(axis=1)
        return dpo_loss(logps[:4], logps[4:], ref_logps[:4], ref_logps[4:], cfg.beta, cfg.label_smoothing)[0]

    assert_matches_finite_differences(policy, captured, objective)


def test_a_batch_of_identical_pairs_is_reported_and_barely_moves_the_weights():
    policy, ref = make_models()
    perturb(policy, scale=0.3)
    trainer = DPOTrainer(policy, ref, DPOConfig(lr=1e-2, batch_size=4, forward_batch_size=2, mini_batch_size=4))
    queries, chosen, _ = pair_batch(4)
    captured = capture_gradients(trainer)
    stats = trainer.step(queries, chosen, [c.copy() for c in chosen])
    assert stats["dpo/identical_pairs"] == 1.0 and abs(stats["dpo/loss/train"] - np.log(2)) < 1e-15
    # the chosen and rejected copies of each response get opposite gradients of equal size: they cancel up to the
    # rounding of the two rows' forward passes
    worst = max(np.abs(g).max() for g in captured.values())
    assert worst < 1e-15, f"largest gradient entry {worst:.1e}"


def test_step_refuses_bad_batches():
    policy, ref = make_models()
    trainer = DPOTrainer(policy, ref, DPOConfig(batch_size=4, forward_batch_size=2, mini_batch_size=2))
    queries, chosen, rejected = pair_batch(4)
    with pytest.raises(ValueError, match="3 rejected"):
        trainer.step(queries, chosen, rejected[:3])
    with pytest.raises(ValueError, match="rejected: row 2 has an empty response"):
        trainer.step(queries, chosen, rejected[:2] + [np.array([], dtype=int)] + rejected[3:])
    with pytest.raises(ValueError, match="chosen: .*block_size"):
        trainer.step(queries, chosen[:3] + [np.ones(11, dtype=int)], rejected)
    with pytest.raises(ValueError, match="mini_batch_size=2"):
        DPOConfig(batch_size=4, forward_batch_size=2, mini_batch_size=3)
    with pytest.raises(ValueError, match="DPOConfig.beta must be a finite number > 0"):
        DPOConfig(beta=0.0)
    with pytest.raises(ValueError, match=r"DPOConfig.label_smoothing must lie in \[0, 0.5\)"):
        DPOConfig(label_smoothing=0.5)


def test_dpo_learns_a_token_level_preference_from_pairs_of_reference_samples():
    """Pairs of two reference samples per prompt, the one with more 7s chosen (pairs with as many 7s on both sides
    dropped): the policy's share of 7s must rise well above the reference's 1/13, with no sampling while training."""
    cfg = mg.GPTConfig(vocab_size=13, block_size=12, n_layer=2, n_head=2, n_embd=16)
    ref, policy = mg.GPT(cfg, seed=0), mg.GPT(cfg, seed=0)
    trainer = DPOTrainer(policy, ref, DPOConfig(lr=3e-3, beta=0.1, batch_size=32, forward_batch_size=16,
                                                mini_batch_size=8))
    rng = np.random.default_rng(0)
    start = time.perf_counter()

    def sevens(model, n):
        queries = [rng.integers(1, 13, rng.integers(1, 4)) for _ in range(n)]
        return np.mean([np.mean(r == 7) for r in generate_responses(model, queries, 6, forward_batch_size=16, rng=rng)])

    before = sevens(policy, 128)
    queries = [rng.integers(1, 13, rng.integers(1, 4)) for _ in range(320)]
    a, b = (generate_responses(ref, queries, 6, forward_batch_size=16, rng=rng) for _ in range(2))
    scores = np.array([[np.mean(x == 7), np.mean(y == 7)] for x, y in zip(a, b)])
    keep = np.flatnonzero(scores[:, 0] != scores[:, 1])
    chosen_side = make_pairs(scores[keep], rng)
    pairs = [(queries[i], (a[i], b[i])[c], (a[i], b[i])[1 - c]) for i, c in zip(keep, chosen_side)]
    for step in range(20):
        part = [pairs[(step * 32 + j) % len(pairs)] for j in range(32)]
        trainer.step(*map(list, zip(*part)))
    after = sevens(policy, 128)
    print(f"share of 7s {before:.3f} -> {after:.3f} from {len(pairs)} pairs in {time.perf_counter() - start:.1f} s")
    assert before < 0.15 and after > 0.5, f"share of 7s went from {before:.3f} to {after:.3f}"
