"""Input checks for ppo_np: every public function of `core`, of the methods beside PPO (kl, rloo, grpo, dpo) and
each trainer's `step` makes one call here.

The equations in `core` then start on their first line. A check raises ValueError with a message that names
the argument and says what it must be. `PPOTrainer.step` checks its batch once and runs its mini-batch loop
inside `trusted()`, so nothing is validated again for every mini-batch (as torch.distributions skips its
argument checks with validate_args=False).
"""
import contextlib

import numpy as np

_enabled = True


@contextlib.contextmanager
def trusted():
    """Inside this block the checks below return at once: for callers that validated their arrays already."""
    global _enabled
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous


# ----------------------------------------------------------------------------------------------------------
# building blocks


def _numeric(name, x):
    dtype = np.asarray(x).dtype
    if not (np.issubdtype(dtype, np.number) or dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {dtype}")


def _same_shape(**arrays):
    shapes = {name: np.shape(a) for name, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"shape mismatch: {listed}; these arrays must have the same shape")


def _per_token(**arrays):
    """(B, T) numeric arrays of one shape."""
    for name, x in arrays.items():
        _numeric(name, x)
    first, x = next(iter(arrays.items()))
    if np.ndim(x) != 2:
        raise ValueError(f"{first} must be (B, T) per-token values, got shape {np.shape(x)}")
    _same_shape(**arrays)


def _mask(mask, shape, min_valid=1):
    """A 0/1 mask of `shape` (None means all valid) with at least `min_valid` valid entries."""
    if mask is None:
        n = int(np.prod(shape))
    else:
        mask = np.asarray(mask)
        if mask.shape != tuple(shape):
            raise ValueError(f"mask has shape {mask.shape} but the values have shape {tuple(shape)}")
        if mask.dtype != bool and not np.all((mask == 0) | (mask == 1)):
            raise ValueError("mask must contain only 0 and 1 (or False/True)")
        n = int(np.count_nonzero(mask))
    if n < min_valid:
        raise ValueError(f"mask has {n} valid entries, this needs at least {min_valid}")


def _response_mask(mask, shape):
    """A (B, T) response mask: 1...1 0...0 in every row, with at least one 1 (a response has a last token)."""
    _mask(mask, shape)
    if mask is None:
        return
    m = np.asarray(mask).astype(bool)
    empty = np.flatnonzero(~m.any(axis=1))
    if empty.size:
        raise ValueError(f"rows {empty.tolist()} of the mask have no valid token (empty responses); "
                         "drop them from the batch")
    bad = np.flatnonzero((m[:, 1:] & ~m[:, :-1]).any(axis=1))   # a 0 followed by a 1: not right padded
    if bad.size:
        raise ValueError(f"rows {bad.tolist()} of the mask are not right padded: each row must be "
                         "1 on its response tokens, then 0 on the padding after them")


def _finite_scores(scores, B):
    if np.shape(scores) != (B,):
        raise ValueError(f"scores has shape {np.shape(scores)}; need one score per response: ({B},)")
    scores = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(scores)):
        bad = np.flatnonzero(~np.isfinite(scores))
        raise ValueError(f"scores at rows {bad[:10].tolist()} are nan or inf; the reward model must give "
                         "finite scores (check it on those texts)")


# ----------------------------------------------------------------------------------------------------------
# one check per public function of ppo_np.core


def logits_and_labels(logits, labels, dlogprobs=None):
    """logits (..., V) float, labels (...) ints in [0, V), dlogprobs (...) if given."""
    if not _enabled:
        return
    _numeric("logits", logits)
    labels = np.asarray(labels)
    if np.ndim(logits) < 2:
        raise ValueError(f"logits must be (B, T, V), got shape {np.shape(logits)}")
    if labels.shape != np.shape(logits)[:-1]:
        raise ValueError(f"labels have shape {labels.shape} but logits have shape {np.shape(logits)}; "
                         "labels must be logits.shape[:-1]")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer token ids, got dtype {labels.dtype}")
    V = np.shape(logits)[-1]
    if labels.size and (labels.min() < 0 or labels.max() >= V):
        raise ValueError(f"labels must lie in [0, {V}), got range [{labels.min()}, {labels.max()}]")
    if dlogprobs is not None and np.shape(dlogprobs) != labels.shape:
        raise ValueError(f"dlogprobs has shape {np.shape(dlogprobs)} but labels have shape {labels.shape}")


def logits(logits):
    if not _enabled:
        return
    _numeric("logits", logits)
    if np.ndim(logits) < 1:
        raise ValueError(f"logits must have a vocabulary axis, got shape {np.shape(logits)}")


def masked_values(x, mask, min_valid=1):
    """x any shape, mask the same shape or None, at least `min_valid` valid entries."""
    if not _enabled:
        return
    _numeric("x", x)
    _mask(mask, np.shape(x), min_valid)


def rewards_inputs(scores, logprobs, ref_logprobs, mask):
    if not _enabled:
        return
    _per_token(logprobs=logprobs, ref_logprobs=ref_logprobs)
    _finite_scores(scores, np.shape(logprobs)[0])
    _response_mask(mask, np.shape(logprobs))


def advantages_inputs(values, rewards, gamma, lam, mask):
    if not _enabled:
        return
    _per_token(values=values, rewards=rewards)
    if not (0 <= gamma <= 1 and 0 <= lam <= 1):
        raise ValueError(f"gamma ({gamma}) and lam ({lam}) must lie in [0, 1]")
    _response_mask(mask, np.shape(values))


def ppo_loss_inputs(logprobs, old_logprobs, values, old_values, advantages, returns, mask, cliprange,
                    cliprange_value):
    if not _enabled:
        return
    _per_token(logprobs=logprobs, old_logprobs=old_logprobs, values=values, old_values=old_values,
               advantages=advantages, returns=returns)
    if not cliprange >= 0:
        raise ValueError(f"cliprange must be >= 0, got {cliprange}")
    if not cliprange_value > 0:
        raise ValueError(f"cliprange_value must be > 0, got {cliprange_value} (at 0 every value sits on both "
                         "bounds of its clip at once)")
    _response_mask(mask, np.shape(logprobs))


def kl_controller(init_kl_coef, target=1.0, horizon=1.0):
    if not (np.isfinite(init_kl_coef) and init_kl_coef >= 0):
        raise ValueError(f"the initial KL coefficient must be a finite number >= 0, got {init_kl_coef}")
    if not (np.isfinite(target) and target > 0):
        raise ValueError(f"target KL must be a finite number > 0, got {target}")
    if not (np.isfinite(horizon) and horizon > 0):
        raise ValueError(f"horizon must be a finite number > 0, got {horizon}")


# ----------------------------------------------------------------------------------------------------------
# PPOConfig and PPOTrainer.step


def _largest_divisor_at_most(n, k):
    return max(d for d in range(1, min(n, k) + 1) if n % d == 0)


def ppo_config(cfg):
    """Positive integer sizes that divide the batch (no tail is ever dropped), finite positive rates."""
    for name in ("batch_size", "forward_batch_size", "mini_batch_size", "ppo_epochs"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"PPOConfig.{name} must be a positive integer, got {value!r}")
    if cfg.batch_size % cfg.forward_batch_size:
        raise ValueError(
            f"PPOConfig.batch_size ({cfg.batch_size}) must be a multiple of forward_batch_size "
            f"({cfg.forward_batch_size}): forward passes run in chunks of forward_batch_size. Use e.g. "
            f"forward_batch_size={_largest_divisor_at_most(cfg.batch_size, cfg.forward_batch_size)} or "
            f"batch_size={cfg.batch_size + cfg.forward_batch_size - cfg.batch_size % cfg.forward_batch_size}.")
    if cfg.batch_size % cfg.mini_batch_size:
        raise ValueError(
            f"PPOConfig.batch_size ({cfg.batch_size}) must be a multiple of mini_batch_size "
            f"({cfg.mini_batch_size}) so that no tail batch is dropped; use e.g. mini_batch_size="
            f"{_largest_divisor_at_most(cfg.batch_size, cfg.mini_batch_size)}.")
    for name in ("lr", "cliprange", "cliprange_value", "vf_coef", "horizon", "target"):
        value = getattr(cfg, name)
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"PPOConfig.{name} must be a finite number > 0, got {value!r}")
    if not (np.isfinite(cfg.init_kl_coef) and cfg.init_kl_coef >= 0):
        raise ValueError(f"PPOConfig.init_kl_coef must be a finite number >= 0, got {cfg.init_kl_coef!r}")
    if not (0 <= cfg.gamma <= 1 and 0 <= cfg.lam <= 1):
        raise ValueError(f"PPOConfig: need 0 <= gamma <= 1 and 0 <= lam <= 1, got gamma={cfg.gamma}, lam={cfg.lam}")
    if cfg.score_clip is not None and not (np.isfinite(cfg.score_clip) and cfg.score_clip > 0):
        raise ValueError(f"PPOConfig.score_clip must be None or a finite number > 0, got {cfg.score_clip!r}")
    if cfg.max_grad_norm is not None and not (np.isfinite(cfg.max_grad_norm) and cfg.max_grad_norm > 0):
        raise ValueError(f"PPOConfig.max_grad_norm must be None or a finite number > 0, got {cfg.max_grad_norm!r}")
    if not (np.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise ValueError(f"PPOConfig.weight_decay must be a finite number >= 0, got {cfg.weight_decay!r}")


def rollout_batch(queries, responses, scores, batch_size, block_size, vocab_size):
    """B = batch_size queries and responses, each a non-empty 1-D array of integer token ids in [0, V), that
    fit the model's context together; B finite scores. Returns them as int64 arrays and a float64 (B,) array."""
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"scores must be a 1-D array of {batch_size} numbers, got shape {scores.shape}")
    if not len(queries) == len(responses) == len(scores) == batch_size:
        raise ValueError(f"got {len(queries)} queries, {len(responses)} responses and {len(scores)} scores; "
                         f"each must equal batch_size = {batch_size}")
    _finite_scores(scores, batch_size)
    checked = []
    for kind, seqs in (("query", queries), ("response", responses)):
        out = []
        for i, ids in enumerate(seqs):
            ids = np.asarray(ids)
            if ids.ndim != 1:
                raise ValueError(f"{kind} {i} has shape {ids.shape}; each {kind} must be a 1-D array of token ids")
            if ids.size == 0:
                raise ValueError(f"row {i} has an empty {kind}; every query and response needs at least one token")
            if not np.issubdtype(ids.dtype, np.integer):
                raise ValueError(f"{kind} {i} has dtype {ids.dtype}; token ids must be integers")
            if ids.min() < 0 or ids.max() >= vocab_size:
                raise ValueError(f"{kind} {i} has token ids outside [0, {vocab_size}) "
                                 f"(min {ids.min()}, max {ids.max()})")
            out.append(ids.astype(np.int64))
        checked.append(out)
    queries, responses = checked
    longest = max(len(q) for q in queries) + max(len(r) for r in responses)
    if longest > block_size:
        raise ValueError(f"longest query + longest response = {longest} tokens exceeds block_size "
                         f"{block_size}; use shorter prompts or responses")
    return queries, responses, scores.astype(np.float64)


# ----------------------------------------------------------------------------------------------------------
# the methods beside PPO: ppo_np.kl, rloo, grpo, dpo


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
    if not _enabled:
        return
    arrays = {"logprobs": logprobs, "ref_logprobs": ref_logprobs}
    if dkl is not None:
        arrays["dkl"] = dkl
    for name, x in arrays.items():
        _numeric(name, x)
    _same_shape(**arrays)


# ----------------------------------------------------------------------------------------------------------
# ppo_np.rloo


def rloo_rewards_inputs(scores, old_logprobs, ref_logprobs, mask):
    if not _enabled:
        return
    _per_token(old_logprobs=old_logprobs, ref_logprobs=ref_logprobs)
    _finite_scores(scores, np.shape(old_logprobs)[0])
    _response_mask(mask, np.shape(old_logprobs))


def rloo_advantages_inputs(rewards, k):
    if not _enabled:
        return
    _groups_of("rewards", rewards, "k", k)


def rloo_loss_inputs(logprobs, old_logprobs, advantages, mask, cliprange):
    if not _enabled:
        return
    _per_token(logprobs=logprobs, old_logprobs=old_logprobs)
    if np.shape(advantages) != (np.shape(logprobs)[0],):
        raise ValueError(f"advantages has shape {np.shape(advantages)}; RLOO needs one advantage per response: "
                         f"({np.shape(logprobs)[0]},)")
    if cliprange is not None and not cliprange >= 0:
        raise ValueError(f"cliprange must be None (no clipping) or >= 0, got {cliprange}")
    _response_mask(mask, np.shape(logprobs))


# ----------------------------------------------------------------------------------------------------------
# ppo_np.grpo

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo")


def grpo_advantages_inputs(scores, group_size):
    if not _enabled:
        return
    _groups_of("scores", scores, "group_size", group_size)
    _finite_scores(scores, len(scores))


def grpo_loss_inputs(logprobs, old_logprobs, ref_logprobs, advantages, mask, beta, epsilon, loss_type,
                     max_completion_length):
    if not _enabled:
        return
    _per_token(logprobs=logprobs, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs)
    if np.shape(advantages) != (np.shape(logprobs)[0],):
        raise ValueError(f"advantages has shape {np.shape(advantages)}; GRPO needs one advantage per response: "
                         f"({np.shape(logprobs)[0]},)")
    if not (np.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be a finite number >= 0, got {beta}")
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    _loss_type(loss_type, max_completion_length, np.shape(logprobs)[1])
    _response_mask(mask, np.shape(logprobs))


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
    if not _enabled:
        return
    arrays = dict(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                  ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    for name, x in arrays.items():
        _numeric(name, x)
    if np.ndim(policy_chosen_logps) != 1 or len(policy_chosen_logps) == 0:
        raise ValueError(f"policy_chosen_logps must be (P,) sequence log-probabilities, one per pair, got shape "
                         f"{np.shape(policy_chosen_logps)}")
    _same_shape(**arrays)
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
                             f"{_largest_divisor_at_most(cfg.batch_size, value)}.")
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
    """Each run of k consecutive rows shares one query (the rows are already checked by rollout_batch)."""
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
            out.append(rollout_batch(queries, responses, np.zeros(batch_size), batch_size, block_size,
                                            vocab_size))
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from e
    (queries, chosen, _), (_, rejected, _) = out
    return queries, chosen, rejected
