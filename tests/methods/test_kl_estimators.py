"""ppo_np.kl: the k1, k2, k3 estimators and their backward against torch autograd of the published formulas, and
every claim of the module docstring about their bias and their gradients, checked by exact enumeration of all
sequences of a tiny GPT (vocabulary 7, length 3: 343 sequences), as tests/app/test_overopt.py enumerates one."""
import itertools

import numpy as np
import pytest
import torch

import minigpt_np as mg
from ppo_np import batch as batch_module
from ppo_np import core, kl, update

V, L = 7, 3


# ---------------------------------------------------------------------------------------------------------
# torch references, copied as written


def schulman_estimators(logr):
    """J. Schulman, "Approximating KL Divergence" (joschu.net/blog/kl-approx.html, 2020-03-07), his code:
    `logr = p.log_prob(x) - q.log_prob(x)` with x ~ q; here q = pi (the sampler), p = pi_ref."""
    k1 = -logr
    k2 = logr ** 2 / 2
    k3 = (logr.exp() - 1) - logr
    return k1, k2, k3


def trl_grpo_per_token_kl(ref_per_token_logps, per_token_logps):
    """TRL 0.19.1, trl/trainer/grpo_trainer.py, GRPOTrainer._compute_loss (identical in 0.14.0's compute_loss)."""
    per_token_kl = (
        torch.exp(ref_per_token_logps - per_token_logps) - (ref_per_token_logps - per_token_logps) - 1
    )
    return per_token_kl


def test_estimators_and_their_backward_match_torch_autograd_of_the_published_formulas():
    rng = np.random.default_rng(0)
    logprobs, ref_logprobs = -rng.uniform(0.1, 5.0, (5, 9)), -rng.uniform(0.1, 5.0, (5, 9))
    dkl = rng.normal(size=(5, 9))
    ours = {"k1": (kl.k1, kl.k1_backward), "k2": (kl.k2, kl.k2_backward), "k3": (kl.k3, kl.k3_backward)}
    lp = torch.tensor(logprobs, requires_grad=True)
    references = dict(zip(("k1", "k2", "k3"), schulman_estimators(torch.tensor(ref_logprobs) - lp)))
    worst = {}
    for name, ref in references.items():
        forward, backward = ours[name]
        grad, = torch.autograd.grad((ref * torch.tensor(dkl)).sum(), lp)
        worst[name] = max(np.abs(forward(logprobs, ref_logprobs) - ref.detach().numpy()).max(),
                          np.abs(backward(logprobs, ref_logprobs, dkl) - grad.numpy()).max())
    lp = torch.tensor(logprobs, requires_grad=True)
    trl = trl_grpo_per_token_kl(torch.tensor(ref_logprobs), lp)
    grad, = torch.autograd.grad((trl * torch.tensor(dkl)).sum(), lp)
    worst["k3 vs TRL"] = max(np.abs(kl.k3(logprobs, ref_logprobs) - trl.detach().numpy()).max(),
                             np.abs(kl.k3_backward(logprobs, ref_logprobs, dkl) - grad.numpy()).max())
    print({k: f"{v:.1e}" for k, v in worst.items()})
    assert max(worst.values()) < 1e-12, worst
    # negative control: the backward of k3 is not the backward of k2 on these inputs
    assert np.abs(kl.k3_backward(logprobs, ref_logprobs, dkl) - kl.k2_backward(logprobs, ref_logprobs, dkl)).max() > 0.1


def test_k2_and_k3_are_never_negative_and_k1_is_on_some_samples():
    rng = np.random.default_rng(1)
    logprobs, ref_logprobs = -rng.uniform(0, 3, 1000), -rng.uniform(0, 3, 1000)
    assert kl.k2(logprobs, ref_logprobs).min() >= 0 and kl.k3(logprobs, ref_logprobs).min() >= 0
    assert kl.k1(logprobs, ref_logprobs).min() < 0
    assert np.all(kl.k3(logprobs, logprobs) == 0) and np.all(kl.k3_backward(logprobs, logprobs, np.ones(1000)) == 0)


def test_the_estimators_assert_one_shape_instead_of_broadcasting():
    """The estimators are elementwise: arrays of other shapes would broadcast into a wrong answer, so one line of
    assertion stops them. Their values come from the model, past the trainer's checks."""
    with pytest.raises(AssertionError, match="one shape"):
        kl.k3(np.zeros((2, 3)), np.zeros((2, 1)))
    with pytest.raises(AssertionError, match="dkl"):
        kl.k2_backward(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros(3))


# ---------------------------------------------------------------------------------------------------------
# exact enumeration on a tiny GPT


def tiny_gpt(seed):
    model = mg.GPT(mg.GPTConfig(vocab_size=V, block_size=L + 1, n_layer=1, n_head=1, n_embd=8), dtype=np.float64,
                   seed=seed)
    # larger token embeddings make the two models' distributions peaked and far apart (KL ~0.4 nats), so that the
    # estimators' biases and the gradients of the two KL directions differ clearly
    model.params["transformer.wte.weight"].data *= 30.0
    return model


@pytest.fixture(scope="module")
def world():
    """Policy pi, reference pi_ref, every sequence y of L tokens after the query [0], and their log-probabilities."""
    policy, ref = tiny_gpt(3), tiny_gpt(4)
    seqs = np.array(list(itertools.product(range(V), repeat=L)))
    batch = batch_module.layout([np.zeros(1, dtype=np.int64)] * len(seqs), list(seqs))
    logprobs = batch_module.response_logprobs(policy, batch, len(seqs))         # (V^L, L) log pi(y_t | y_<t)
    ref_logprobs = batch_module.response_logprobs(ref, batch, len(seqs))
    p = np.exp(logprobs.sum(axis=1))                                             # pi(y)
    assert abs(p.sum() - 1) < 1e-12
    return dict(policy=policy, ref=ref, batch=batch, logprobs=logprobs, ref_logprobs=ref_logprobs, p=p,
                p_ref=np.exp(ref_logprobs.sum(axis=1)))


def sequence_kls(w, logprobs):
    """KL(pi || pi_ref) and KL(pi_ref || pi) over whole sequences, with pi's per-token logprobs given."""
    logp, logp_ref = logprobs.sum(axis=1), w["ref_logprobs"].sum(axis=1)
    return np.sum(np.exp(logp) * (logp - logp_ref)), np.sum(w["p_ref"] * (logp_ref - logp))


def test_k1_and_k3_are_unbiased_for_kl_and_k2_is_biased(world):
    w = world
    kl_forward, kl_reverse = sequence_kls(w, w["logprobs"])
    assert kl_forward > 0.3 and kl_reverse > 1.0
    expect = {}
    for name, k in (("k1", kl.k1), ("k2", kl.k2), ("k3", kl.k3)):
        # per token, summed over the response (as GRPO and PPO use them), and on the sequence's summed log-ratio
        expect[name + " per token"] = np.sum(w["p"] * k(w["logprobs"], w["ref_logprobs"]).sum(axis=1))
        expect[name + " per sequence"] = np.sum(w["p"] * k(w["logprobs"].sum(axis=1), w["ref_logprobs"].sum(axis=1)))
    print(f"KL(pi || pi_ref) = {kl_forward:.6f};", {k: round(v, 6) for k, v in expect.items()})
    for name in ("k1 per token", "k1 per sequence", "k3 per token", "k3 per sequence"):
        assert abs(expect[name] - kl_forward) < 1e-12, f"{name}: E = {expect[name]!r}, KL = {kl_forward!r}"
    for name in ("k2 per token", "k2 per sequence"):
        assert abs(expect[name] - kl_forward) > 0.1 * kl_forward, f"{name} looks unbiased: {expect[name]!r}"


def parameter_gradient(w, dlogprobs=None, dlogits=None):
    """sum over all sequences of the given per-token (or per-logit) weights pushed through the policy -> (P,) vector.
    With dlogprobs = pi(y) k'(...) this is E_{y ~ pi}[sum_t k'_t grad log pi(y_t)], the sampling held fixed."""
    policy, batch = w["policy"], w["batch"]
    logits, response_logits, _ = update.policy_logprobs(policy, batch)
    full = np.zeros_like(logits.data)
    full[:, batch.response_columns] = (dlogits if dlogits is not None else
                                       core.logprobs_from_logits_backward(response_logits, batch.labels, dlogprobs))
    policy.zero_grad()
    mg.tensor.backward([logits], [full])
    return np.concatenate([p.grad.reshape(-1) for p in policy.parameters()])


def directional_derivative(w, f, direction, eps=1e-5):
    """(f(theta + eps d) - f(theta - eps d)) / (2 eps) for f of the policy's per-token logprobs (V^L, L)."""
    params = list(w["policy"].parameters())
    saved = [p.data.copy() for p in params]
    values = []
    for sign in (1.0, -1.0):
        offset = 0
        for p, s in zip(params, saved):
            p.data = s + sign * eps * direction[offset:offset + s.size].reshape(s.shape)
            offset += s.size
        values.append(f(batch_module.response_logprobs(w["policy"], w["batch"], len(w["p"]))))
    for p, s in zip(params, saved):
        p.data = s
    return (values[0] - values[1]) / (2 * eps)


def rel(a, b):
    return abs(a - b) / max(abs(a) + abs(b), 1e-300)


def test_on_one_distribution_k1_gives_no_gradient_k2_the_kls_and_k3_the_reverse_kls(world):
    """The estimators applied to whole sequences (one distribution over V^L outcomes), differentiated through
    log pi only: E[k1' grad] = 0, E[k2' grad] = grad KL(pi || pi_ref), E[k3' grad] = grad KL(pi_ref || pi)."""
    w = world
    seq_logp = w["logprobs"].sum(axis=1, keepdims=True)
    seq_ref = w["ref_logprobs"].sum(axis=1, keepdims=True)
    ones = np.ones_like(seq_logp)
    grads = {name: parameter_gradient(w, w["p"][:, None] * backward(seq_logp, seq_ref, ones) * np.ones((1, L)))
             for name, backward in (("k1", kl.k1_backward), ("k2", kl.k2_backward), ("k3", kl.k3_backward))}
    rng = np.random.default_rng(0)
    for _ in range(2):
        d = rng.normal(size=grads["k1"].size)
        forward = directional_derivative(w, lambda lp: sequence_kls(w, lp)[0], d)
        reverse = directional_derivative(w, lambda lp: sequence_kls(w, lp)[1], d)
        print(f"d KL(pi||ref) {forward:.6g}, d KL(ref||pi) {reverse:.6g}, k1 {grads['k1'] @ d:.2g}, "
              f"k2 {grads['k2'] @ d:.6g}, k3 {grads['k3'] @ d:.6g}")
        assert abs(grads["k1"] @ d) < 1e-12 * np.abs(d).sum()
        assert rel(grads["k2"] @ d, forward) < 1e-6
        assert rel(grads["k3"] @ d, reverse) < 1e-6
        # the claim that matters: k3's gradient is NOT the gradient of the KL it estimates
        assert rel(grads["k3"] @ d, forward) > 0.1


def test_summed_per_token_k2_and_k3_give_each_tokens_conditional_kl_gradient_not_the_sequence_kls(world):
    """Per token, summed over the response: k2 gives sum_t E_{y<t ~ pi} grad KL(pi(.|y<t) || ref(.|y<t)) and k3 the
    same with KL(ref(.|y<t) || pi(.|y<t)), the prefix distribution held fixed. Computed independently from the full
    next-token distributions at every prefix: d KL(pi_t || ref_t) / d logits = pi_t (log pi_t - log ref_t - KL_t)
    and d KL(ref_t || pi_t) / d logits = pi_t - ref_t, weighted by pi(y) (summing over the continuations of a
    prefix gives the prefix's probability)."""
    w = world
    ones = np.ones_like(w["logprobs"])
    k2_grad = parameter_gradient(w, w["p"][:, None] * kl.k2_backward(w["logprobs"], w["ref_logprobs"], ones))
    k3_grad = parameter_gradient(w, w["p"][:, None] * kl.k3_backward(w["logprobs"], w["ref_logprobs"], ones))

    cols = w["batch"].response_columns
    with mg.no_grad():
        log_pi = core.log_softmax(w["policy"](w["batch"].input_ids, w["batch"].attention_mask).data[:, cols])
        log_ref = core.log_softmax(w["ref"](w["batch"].input_ids, w["batch"].attention_mask).data[:, cols])
    pi, pi_ref = np.exp(log_pi), np.exp(log_ref)                                 # (V^L, L, V) next-token distributions
    kl_t = (pi * (log_pi - log_ref)).sum(axis=-1, keepdims=True)
    weight = w["p"][:, None, None]
    conditional_forward = parameter_gradient(w, dlogits=weight * pi * (log_pi - log_ref - kl_t))
    conditional_reverse = parameter_gradient(w, dlogits=weight * (pi - pi_ref))

    # the gradients of the sequence KLs, exactly by enumeration: grad KL(pi || ref) = sum_y pi(y) log-ratio(y) grad
    # log pi(y) and grad KL(ref || pi) = -sum_y ref(y) grad log pi(y); checked by finite differences along one direction
    log_ratio = (w["logprobs"] - w["ref_logprobs"]).sum(axis=1, keepdims=True)
    sequence_forward = parameter_gradient(w, w["p"][:, None] * log_ratio * ones)
    sequence_reverse = parameter_gradient(w, -w["p_ref"][:, None] * ones)
    d = np.random.default_rng(1).normal(size=k2_grad.size)
    assert rel(sequence_forward @ d, directional_derivative(w, lambda lp: sequence_kls(w, lp)[0], d)) < 1e-6
    assert rel(sequence_reverse @ d, directional_derivative(w, lambda lp: sequence_kls(w, lp)[1], d)) < 1e-6

    scale = np.abs(conditional_forward).max() + np.abs(conditional_reverse).max()
    assert np.abs(k2_grad - conditional_forward).max() < 1e-12 * scale
    assert np.abs(k3_grad - conditional_reverse).max() < 1e-12 * scale
    distances = {f"{name} vs sequence {target_name}": np.linalg.norm(g - target) / np.linalg.norm(target)
                 for name, g in (("k2", k2_grad), ("k3", k3_grad))
                 for target_name, target in (("KL(pi||ref)", sequence_forward), ("KL(ref||pi)", sequence_reverse))}
    print({k: round(v, 3) for k, v in distances.items()})
    assert min(distances.values()) > 0.1, distances


def test_the_sequence_kls_differ_from_the_summed_estimators_by_prefix_weights_and_the_prefix_term(world):
    """Why summed k2 and k3 miss the sequence KLs' gradients, term by term (the module docstring's two reasons):
    grad KL(ref || pi) = sum_t E_{y<t ~ ref}[grad KL_t(ref || pi)], the conditional gradients that summed k3 gives but
    with prefixes weighted by pi_ref instead of pi; grad KL(pi || ref) = the conditional gradients that summed k2
    gives, plus the prefix term sum_t E_{y<t ~ pi}[KL_t(pi || ref) grad log pi(y<t)]."""
    w = world
    cols = w["batch"].response_columns
    with mg.no_grad():
        log_pi = core.log_softmax(w["policy"](w["batch"].input_ids, w["batch"].attention_mask).data[:, cols])
        log_ref = core.log_softmax(w["ref"](w["batch"].input_ids, w["batch"].attention_mask).data[:, cols])
    pi, pi_ref = np.exp(log_pi), np.exp(log_ref)                                 # (V^L, L, V)
    kl_t = (pi * (log_pi - log_ref)).sum(axis=-1)                                # KL_t(pi || ref) at row y's prefix
    ones = np.ones_like(w["logprobs"])
    log_ratio = (w["logprobs"] - w["ref_logprobs"]).sum(axis=1, keepdims=True)
    sequence_forward = parameter_gradient(w, w["p"][:, None] * log_ratio * ones)
    sequence_reverse = parameter_gradient(w, -w["p_ref"][:, None] * ones)
    k2_grad = parameter_gradient(w, w["p"][:, None] * kl.k2_backward(w["logprobs"], w["ref_logprobs"], ones))
    k3_grad = parameter_gradient(w, w["p"][:, None] * kl.k3_backward(w["logprobs"], w["ref_logprobs"], ones))

    # reverse: the conditional gradients pi_t - ref_t, each prefix weighted by pi_ref(y<t) (rows summed over their
    # continuations) instead of pi(y<t)
    reverse_by_ref_prefixes = parameter_gradient(w, dlogits=w["p_ref"][:, None, None] * (pi - pi_ref))
    # forward: the token at position s changes which prefixes occur at every later t > s, weighted by KL_t there
    later_kl = np.cumsum(kl_t[:, ::-1], axis=1)[:, ::-1] - kl_t                  # sum_{t > s} KL_t, (V^L, L)
    prefix_term = parameter_gradient(w, w["p"][:, None] * later_kl)

    scale = np.abs(sequence_forward).max() + np.abs(sequence_reverse).max()
    errors = {"KL(ref||pi) vs its conditional gradients on ref's prefixes":
              np.abs(sequence_reverse - reverse_by_ref_prefixes).max() / scale,
              "KL(pi||ref) vs summed k2 + the prefix term":
              np.abs(sequence_forward - (k2_grad + prefix_term)).max() / scale}
    print({k: f"{v:.1e}" for k, v in errors.items()})
    assert max(errors.values()) < 1e-12, errors
    # each missing piece is not small: without it the gradient is off by a good share of its norm
    assert np.linalg.norm(k3_grad - sequence_reverse) > 0.1 * np.linalg.norm(sequence_reverse)
    assert np.linalg.norm(prefix_term) > 0.1 * np.linalg.norm(sequence_forward)


def test_schulman_caveats_k3_can_vary_far_more_than_k1_and_the_mean_of_k2_is_no_f_divergence():
    """The module docstring's caveats, by exact enumeration of small discrete distributions."""
    def moments(k, p, p_ref):
        values = k(np.log(p), np.log(p_ref))
        mean = p @ values
        return mean, p @ (values - mean) ** 2

    # pi puts little mass where pi_ref puts half: E_pi[r^2] = 1 + chi^2(ref || pi) is large, and so is Var k3
    p, p_ref = np.array([0.999, 0.001]), np.array([0.5, 0.5])
    (kl1, var1), (_, var2), (kl3, var3) = (moments(k, p, p_ref) for k in (kl.k1, kl.k2, kl.k3))
    assert abs(kl1 - kl3) < 1e-15 and abs(kl1 - p @ np.log(p / p_ref)) < 1e-15     # both unbiased
    assert abs(p @ (p_ref / p) ** 2 - (1 + np.sum((p_ref - p) ** 2 / p))) < 1e-9
    print(f"far apart: Var k1 {var1:.4f}, Var k2 {var2:.4f}, Var k3 {var3:.1f}")
    assert var3 > 4000 * var1 and var2 > 7 * var1
    # close together, the low variance Schulman reports: k3 varies far less than k1
    p = np.array([0.55, 0.45])
    assert moments(kl.k3, p, p_ref)[1] < 1e-3 * moments(kl.k1, p, p_ref)[1]

    # E_pi[k2] = sum pi f(ref / pi), f(u) = 1/2 log(u)^2, rises when outcomes 0 and 1 are merged; the KL (an
    # f-divergence) falls, as the data-processing inequality requires
    def merged(q):
        return np.array([q[0] + q[1], q[2]])
    p, p_ref = np.array([0.09, 0.01, 0.9]), np.array([0.09, 0.81, 0.1])
    k2_mean = lambda q, q_ref: moments(kl.k2, q, q_ref)[0]                     # noqa: E731
    kl_true = lambda q, q_ref: q @ np.log(q / q_ref)                           # noqa: E731
    print(f"E[k2] {k2_mean(p, p_ref):.4f} -> {k2_mean(merged(p), merged(p_ref)):.4f} merged; "
          f"KL {kl_true(p, p_ref):.4f} -> {kl_true(merged(p), merged(p_ref)):.4f}")
    assert k2_mean(merged(p), merged(p_ref)) > k2_mean(p, p_ref) + 0.1
    assert kl_true(merged(p), merged(p_ref)) < kl_true(p, p_ref)
