"""Input checks for the methods beside PPO (kl, rloo, grpo, dpo): one call per public function, as `ppo_np.checks`.

Built from the building blocks of `ppo_np.checks` and switched off by the same `checks.trusted()` block, so a
trainer validates its batch once and its mini-batch loop runs unchecked. Every check raises ValueError with a
message that names the argument and says what it must be.
"""
import numpy as np

from . import checks


def _on():
    return checks._enabled


def _positive_int(owner, name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{owner}.{name} must be a positive integer, got {value!r}")


def _positive_finite(owner, name, value):
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{owner}.{name} must be a finite number > 0, got {value!r}")


def _group_size(name, k):
    """k >= 2 responses per prompt: a baseline from the other responses of a group needs at least one other."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ValueError(f"{name} must be an integer >= 2, got {k!r}: a group-relative advantage compares each "
                         "response with the other responses to the same prompt, and one response has none")


def _groups_of(what, x, name, k):
    _group_size(name, k)
    if np.ndim(x) != 1 or len(x) % k:
        raise ValueError(f"{what} has shape {np.shape(x)}; need a 1-D array whose length is a multiple of {name} = "
                         f"{k} ({k} consecutive responses per prompt)")


# ----------------------------------------------------------------------------------------------------------
# ppo_np.kl


def kl_inputs(logprobs, ref_logprobs, dkl=None):
    if not _on():
        return
    arrays = {"logprobs": logprobs, "ref_logprobs": ref_logprobs}
    if dkl is not None:
        arrays["dkl"] = dkl
    for name, x in arrays.items():
        checks._numeric(name, x)
    checks._same_shape(**arrays)


# ----------------------------------------------------------------------------------------------------------
# ppo_np.rloo


def rloo_rewards_inputs(scores, old_logprobs, ref_logprobs, mask):
    if not _on():
        return
    checks._per_token(old_logprobs=old_logprobs, ref_logprobs=ref_logprobs)
    checks._finite_scores(scores, np.shape(old_logprobs)[0])
    checks._response_mask(mask, np.shape(old_logprobs))


def rloo_advantages_inputs(rewards, k):
    if not _on():
        return
    _groups_of("rewards", rewards, "k", k)


def rloo_loss_inputs(logprobs, old_logprobs, advantages, mask, cliprange):
    if not _on():
        return
    checks._per_token(logprobs=logprobs, old_logprobs=old_logprobs)
    if np.shape(advantages) != (np.shape(logprobs)[0],):
        raise ValueError(f"advantages has shape {np.shape(advantages)}; RLOO needs one advantage per response: "
                         f"({np.shape(logprobs)[0]},)")
    if cliprange is not None and not cliprange >= 0:
        raise ValueError(f"cliprange must be None (no clipping) or >= 0, got {cliprange}")
    checks._response_mask(mask, np.shape(logprobs))


# ----------------------------------------------------------------------------------------------------------
# ppo_np.grpo

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo")


def grpo_advantages_inputs(scores, group_size):
    if not _on():
        return
    _groups_of("scores", scores, "group_size", group_size)
    checks._finite_scores(scores, len(scores))


def grpo_loss_inputs(logprobs, old_logprobs, ref_logprobs, advantages, mask, beta, epsilon, loss_type,
                     max_completion_length):
    if not _on():
        return
    checks._per_token(logprobs=logprobs, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs)
    if np.shape(advantages) != (np.shape(logprobs)[0],):
        raise ValueError(f"advantages has shape {np.shape(advantages)}; GRPO needs one advantage per response: "
                         f"({np.shape(logprobs)[0]},)")
    if not (np.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be a finite number >= 0, got {beta}")
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    _loss_type(loss_type, max_completion_length, np.shape(logprobs)[1])
    checks._response_mask(mask, np.shape(logprobs))


def _loss_type(loss_type, max_completion_length, T=None):
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if loss_type == "dr_grpo":
        if isinstance(max_completion_length, bool) or not isinstance(max_completion_length, (int, np.integer)) \
                or max_completion_length <= 0:
            raise ValueError(f"loss_type 'dr_grpo' divides by B * max_completion_length, a constant: give "
                             f"max_completion_length as a positive integer, got {max_completion_length!r}")
        if T is not None and T > max_completion_length:
            raise ValueError(f"responses have up to {T} tokens but max_completion_length is "
                             f"{max_completion_length}; it must be the longest response the rollout can produce")


# ----------------------------------------------------------------------------------------------------------
# ppo_np.dpo


def dpo_loss_inputs(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
                    label_smoothing):
    if not _on():
        return
    arrays = dict(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                  ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    for name, x in arrays.items():
        checks._numeric(name, x)
    if np.ndim(policy_chosen_logps) != 1 or len(policy_chosen_logps) == 0:
        raise ValueError(f"policy_chosen_logps must be (P,) sequence log-probabilities, one per pair, got shape "
                         f"{np.shape(policy_chosen_logps)}")
    checks._same_shape(**arrays)
    if not (np.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta}")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5), got {label_smoothing} (it is the probability that "
                         "a label is flipped; at 0.5 the labels carry no information)")


def pair_scores(scores):
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] != 2 or len(scores) == 0:
        raise ValueError(f"scores must be (P, 2): the proxy scores of the two responses to each prompt, got shape "
                         f"{scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"scores at pairs {np.flatnonzero(~np.isfinite(scores).all(axis=1))[:10].tolist()} are nan "
                         "or inf")
    return scores


# ----------------------------------------------------------------------------------------------------------
# the trainers' configs and batches


def sizes(owner, cfg, epochs_name):
    """Positive integer sizes that divide the batch (no tail is ever dropped), a finite positive lr."""
    for name in ("batch_size", "forward_batch_size", "mini_batch_size", epochs_name):
        _positive_int(owner, name, getattr(cfg, name))
    for name in ("forward_batch_size", "mini_batch_size"):
        value = getattr(cfg, name)
        if cfg.batch_size % value:
            raise ValueError(f"{owner}.batch_size ({cfg.batch_size}) must be a multiple of {name} ({value}) so that "
                             f"no row is dropped; use e.g. {name}="
                             f"{checks._largest_divisor_at_most(cfg.batch_size, value)}.")
    _positive_finite(owner, "lr", cfg.lr)
    if cfg.max_grad_norm is not None:
        _positive_finite(owner, "max_grad_norm", cfg.max_grad_norm)
    if not (np.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise ValueError(f"{owner}.weight_decay must be a finite number >= 0, got {cfg.weight_decay!r}")


def rloo_config(cfg):
    sizes("RLOOConfig", cfg, "ppo_epochs")
    _group_size("RLOOConfig.rloo_k", cfg.rloo_k)
    if cfg.batch_size % cfg.rloo_k:
        raise ValueError(f"RLOOConfig.batch_size ({cfg.batch_size}) must be a multiple of rloo_k ({cfg.rloo_k}): "
                         "the batch is made of whole groups of rloo_k responses per prompt")
    if not (np.isfinite(cfg.kl_coef) and cfg.kl_coef >= 0):
        raise ValueError(f"RLOOConfig.kl_coef must be a finite number >= 0, got {cfg.kl_coef!r}")
    if cfg.cliprange is not None:
        _positive_finite("RLOOConfig", "cliprange", cfg.cliprange)


def grpo_config(cfg):
    sizes("GRPOConfig", cfg, "num_iterations")
    _group_size("GRPOConfig.group_size", cfg.group_size)
    if cfg.batch_size % cfg.group_size:
        raise ValueError(f"GRPOConfig.batch_size ({cfg.batch_size}) must be a multiple of group_size "
                         f"({cfg.group_size}): the batch is made of whole groups of responses per prompt")
    if not (np.isfinite(cfg.beta) and cfg.beta >= 0):
        raise ValueError(f"GRPOConfig.beta must be a finite number >= 0, got {cfg.beta!r}")
    _positive_finite("GRPOConfig", "epsilon", cfg.epsilon)
    _loss_type(cfg.loss_type, cfg.max_completion_length)


def dpo_config(cfg):
    sizes("DPOConfig", cfg, "epochs")
    _positive_finite("DPOConfig", "beta", cfg.beta)
    if not 0 <= cfg.label_smoothing < 0.5:
        raise ValueError(f"DPOConfig.label_smoothing must lie in [0, 0.5), got {cfg.label_smoothing!r}")


def groups(queries, k):
    """Each run of k consecutive rows shares one query (the rows are already checked by checks.rollout_batch)."""
    for g in range(0, len(queries), k):
        for j in range(g + 1, g + k):
            if not np.array_equal(queries[j], queries[g]):
                raise ValueError(f"rows {g}..{g + k - 1} must be {k} responses to one prompt, but query {j} differs "
                                 f"from query {g}; put the {k} responses to each prompt in consecutive rows")


def response_lengths(responses, max_completion_length):
    longest = max(len(r) for r in responses)
    if max_completion_length is not None and longest > max_completion_length:
        raise ValueError(f"a response has {longest} tokens, more than max_completion_length = "
                         f"{max_completion_length}")


def preference_batch(queries, chosen, rejected, batch_size, block_size, vocab_size):
    """B = batch_size (query, chosen, rejected) triples of valid token ids that fit the model's context."""
    if not len(queries) == len(chosen) == len(rejected) == batch_size:
        raise ValueError(f"got {len(queries)} queries, {len(chosen)} chosen and {len(rejected)} rejected responses; "
                         f"each must equal batch_size = {batch_size}")
    out = []
    for name, responses in (("chosen", chosen), ("rejected", rejected)):
        try:
            out.append(checks.rollout_batch(queries, responses, np.zeros(batch_size), batch_size, block_size,
                                            vocab_size))
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from e
    (queries, chosen, _), (_, rejected, _) = out
    return queries, chosen, rejected
