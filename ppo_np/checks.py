"""Input checks for ppo_np: every public function of `core`, `kl`, the methods (rloo, grpo, dpo, reinforce), every
config and every trainer's `step` makes one call here, so the equations start on their first line.

A check raises ValueError with a message that names the argument and says what it must be. The checks are built
from the helpers of the first two sections, so each condition is written once: a number's bounds, an integer's, a
choice among names, a mask, whole groups, a batch of token ids. A new method's module needs nothing added here:
`policy_loss_inputs` and `method_config` check what a policy-gradient loss and a trainer's config have in common
(ppo_np/reinforce.py uses only those two). They always run, in every mini-batch too: at the pipeline's default size
they take about 0.1% of a PPO step (scripts/bench_checks.py; docs/ppo.md, section 17).
"""
import numpy as np

# ----------------------------------------------------------------------------------------------------------
# building blocks: numbers


def _integer(name, value, minimum=1, why=""):
    """An int (not a bool) >= minimum; minimum 1 reads "a positive integer"."""
    if isinstance(value, bool) or not (isinstance(value, (int, np.integer)) and value >= minimum):
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}{why}")


def _number(name, value, low=0.0, *, strict=True, finite=True, none_means=None, why=""):
    """value > low (or >= low unless strict), and finite unless finite=False; nan always fails. With none_means,
    None is allowed too, and means that."""
    if none_means is not None:
        if value is None:
            return
        why = f" (or None: {none_means}){why}"
    above = value > low if strict else value >= low
    if not (above and (np.isfinite(value) or not finite)):
        bound = f"{'>' if strict else '>='} {low:g}"
        raise ValueError(f"{name} must be {'a finite number ' if finite else ''}{bound}, got {value!r}{why}")


def _choice(name, value, choices):
    """value is one of the names in choices."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _flag(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def _interval(name, value, high, *, high_open=False, why=""):
    """0 <= value <= high, or < high if high_open."""
    if not (0 <= value and (value < high if high_open else value <= high)):
        raise ValueError(f"{name} must lie in [0, {high:g}{')' if high_open else ']'}, got {value!r}{why}")


# ----------------------------------------------------------------------------------------------------------
# building blocks: arrays


def _numeric(name, x):
    dtype = np.asarray(x).dtype
    if not (np.issubdtype(dtype, np.number) or dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {dtype}")


def _same_shape(**arrays):
    shapes = {name: np.shape(a) for name, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"shape mismatch: {listed}; these arrays must have the same shape")


def _numeric_same_shape(**arrays):
    for name, x in arrays.items():
        _numeric(name, x)
    _same_shape(**arrays)


def _per_token(**arrays):
    """(B, T) numeric arrays of one shape."""
    first, x = next(iter(arrays.items()))
    if np.ndim(x) != 2:
        raise ValueError(f"{first} must be (B, T) per-token values, got shape {np.shape(x)}")
    _numeric_same_shape(**arrays)


def _per_response(name, x, B, method):
    if np.shape(x) != (B,):
        raise ValueError(f"{name} has shape {np.shape(x)}; {method} needs one {name[:-1]} per response: ({B},)")


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


def _responses(method, advantages, mask, **per_token):
    """(B, T) per-token arrays of one shape, one advantage per response (B,), a right-padded response mask."""
    _per_token(**per_token)
    shape = np.shape(next(iter(per_token.values())))
    _per_response("advantages", advantages, shape[0], method)
    _response_mask(mask, shape)
    return shape


def _finite(name, x, unit, hint=""):
    """Every entry finite; names the first bad rows (units: "rows", "pairs")."""
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        bad = np.flatnonzero(~np.isfinite(x).reshape(len(x), -1).all(axis=1))
        raise ValueError(f"{name} at {unit} {bad[:10].tolist()} are nan or inf{hint}")


def _scores(scores, B):
    """(B,) finite scores."""
    if np.shape(scores) != (B,):
        raise ValueError(f"scores has shape {np.shape(scores)}; need one score per response: ({B},)")
    _finite("scores", scores, "rows", "; the reward model must give finite scores (check it on those texts)")


def _group_size(name, k):
    """k >= 2 responses per prompt: a baseline from the other responses of a group needs at least one other."""
    _integer(name, k, 2, ": a group-relative advantage compares each response with the other responses to the same "
                         "prompt, and one response has none")


def _longest_response(T, max_completion_length):
    if max_completion_length is not None and T > max_completion_length:
        raise ValueError(f"responses have up to {T} tokens but max_completion_length = {max_completion_length}; it "
                         "must be the longest response the rollout can produce")


# ----------------------------------------------------------------------------------------------------------
# ppo_np.core


def logits_and_labels(logits, labels, dlogprobs=None):
    """logits (..., V) float, labels (...) ints in [0, V), dlogprobs (...) if given."""
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
    _numeric("logits", logits)
    if np.ndim(logits) < 1:
        raise ValueError(f"logits must have a vocabulary axis, got shape {np.shape(logits)}")


def masked_values(x, mask, min_valid=1):
    """x any shape, mask the same shape or None, at least `min_valid` valid entries."""
    _numeric("x", x)
    _mask(mask, np.shape(x), min_valid)


def rewards_inputs(scores, logprobs, ref_logprobs, mask):
    """PPO's per-token and RLOO's per-response rewards: logprobs, ref_logprobs (B, T), (B,) finite scores."""
    _per_token(logprobs=logprobs, ref_logprobs=ref_logprobs)
    _scores(scores, np.shape(logprobs)[0])
    _response_mask(mask, np.shape(logprobs))


def advantages_inputs(values, rewards, gamma, lam, mask):
    _per_token(values=values, rewards=rewards)
    _interval("gamma", gamma, 1.0)
    _interval("lam", lam, 1.0)
    _response_mask(mask, np.shape(values))


def ppo_loss_inputs(logprobs, old_logprobs, values, old_values, advantages, returns, mask, cliprange,
                    cliprange_value):
    _per_token(logprobs=logprobs, old_logprobs=old_logprobs, values=values, old_values=old_values,
               advantages=advantages, returns=returns)
    _number("cliprange", cliprange, strict=False, finite=False)
    _number("cliprange_value", cliprange_value, finite=False,
            why=" (at 0 every value sits on both bounds of its clip at once)")
    _response_mask(mask, np.shape(logprobs))


def kl_controller(init_kl_coef, target=1.0, horizon=1.0):
    _number("init_kl_coef", init_kl_coef, strict=False)
    _number("target", target)
    _number("horizon", horizon)


# ----------------------------------------------------------------------------------------------------------
# ppo_np.kl, rloo, grpo, dpo


def kl_inputs(logprobs, ref_logprobs, dkl=None):
    arrays = {"logprobs": logprobs, "ref_logprobs": ref_logprobs}
    if dkl is not None:
        arrays["dkl"] = dkl
    _numeric_same_shape(**arrays)


def groups_of(what, x, name, k):
    """x (B,), B a multiple of the group size k >= 2: k consecutive responses per prompt."""
    _group_size(name, k)
    if np.ndim(x) != 1 or len(x) % k:
        raise ValueError(f"{what} has shape {np.shape(x)}; need a 1-D array whose length is a multiple of {name} = "
                         f"{k} ({k} consecutive responses per prompt)")


def group_scores(scores, group_size):
    groups_of("scores", scores, "group_size", group_size)
    _scores(scores, len(scores))


def rloo_loss_inputs(logprobs, old_logprobs, advantages, mask, cliprange):
    _responses("RLOO", advantages, mask, logprobs=logprobs, old_logprobs=old_logprobs)
    _number("cliprange", cliprange, strict=False, finite=False, none_means="no clipping")


LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")


def _grpo_options(owner, loss_type, max_completion_length, importance_sampling_level, use_bias_correction_kl):
    """The names GRPO's loss and config share: loss_type (with dr_grpo's constant), the ratio's level, the flag."""
    _choice(f"{owner}loss_type", loss_type, LOSS_TYPES)
    if loss_type == "dr_grpo":
        _integer(f"{owner}max_completion_length", max_completion_length,
                 why=": loss_type 'dr_grpo' divides by B * max_completion_length, a constant")
    _choice(f"{owner}importance_sampling_level", importance_sampling_level, IMPORTANCE_SAMPLING_LEVELS)
    _flag(f"{owner}use_bias_correction_kl", use_bias_correction_kl)


def grpo_loss_inputs(logprobs, old_logprobs, ref_logprobs, advantages, mask, beta, epsilon, epsilon_high, loss_type,
                     max_completion_length, importance_sampling_level, use_bias_correction_kl, num_items_in_batch,
                     gradient_accumulation_steps, steps_per_generation):
    shape = _responses("GRPO", advantages, mask, logprobs=logprobs, old_logprobs=old_logprobs,
                       ref_logprobs=ref_logprobs)
    _number("beta", beta, strict=False)
    _number("epsilon", epsilon, strict=False, finite=False)
    _number("epsilon_high", epsilon_high, strict=False, finite=False, none_means="epsilon_high = epsilon")
    _grpo_options("", loss_type, max_completion_length, importance_sampling_level, use_bias_correction_kl)
    if loss_type == "dr_grpo":
        _longest_response(shape[1], max_completion_length)
    _integer("gradient_accumulation_steps", gradient_accumulation_steps)
    _integer("steps_per_generation", steps_per_generation)
    if num_items_in_batch is not None:
        tokens = int(np.prod(shape)) if mask is None else int(np.count_nonzero(mask))
        _integer("num_items_in_batch", num_items_in_batch, tokens,
                 why=": it counts the response tokens of the whole batch this call is a part of")


def policy_loss_inputs(method, advantages, mask=None, num_responses=None, **per_token):
    """A policy-gradient loss over B responses, for a method's own module: (B, T) per-token arrays of one shape, one
    advantage per response, a right-padded mask; num_responses, if given, an integer >= B (the responses of the
    whole batch whose loss this call is a part of)."""
    shape = _responses(method, advantages, mask, **per_token)
    if num_responses is not None:
        _integer("num_responses", num_responses, shape[0],
                 why=": it counts the responses of the whole batch this call is a part of")


def _label_smoothing(name, value):
    _interval(name, value, 0.5, high_open=True,
              why=" (it is the probability that a label is flipped; at 0.5 the labels carry no information)")


def dpo_loss_inputs(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
                    label_smoothing):
    if np.ndim(policy_chosen_logps) != 1 or len(policy_chosen_logps) == 0:
        raise ValueError(f"policy_chosen_logps must be (P,) sequence log-probabilities, one per pair, got shape "
                         f"{np.shape(policy_chosen_logps)}")
    _numeric_same_shape(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                        ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    _number("beta", beta)
    _label_smoothing("label_smoothing", label_smoothing)


def pair_scores(scores):
    """(P, 2) finite scores of the two responses to each prompt -> as float64."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] != 2 or len(scores) == 0:
        raise ValueError(f"scores must be (P, 2): the proxy scores of the two responses to each prompt, got shape "
                         f"{scores.shape}")
    _finite("scores", scores, "pairs")
    return scores


# ----------------------------------------------------------------------------------------------------------
# the trainers' configs


def _largest_divisor_at_most(n, k):
    return max(d for d in range(1, min(n, k) + 1) if n % d == 0)


def _sizes(owner, cfg, epochs=None):
    """What every trainer's config has: positive integer sizes that divide the batch (no row is ever dropped),
    a finite lr > 0, an optional max_grad_norm > 0, a weight_decay >= 0. epochs: the field that counts the passes
    over the batch, if the method has one."""
    for name in ("batch_size", "forward_batch_size", "mini_batch_size") + ((epochs,) if epochs else ()):
        _integer(f"{owner}.{name}", getattr(cfg, name))
    for name in ("forward_batch_size", "mini_batch_size"):
        size = getattr(cfg, name)
        if cfg.batch_size % size:
            raise ValueError(f"{owner}.batch_size ({cfg.batch_size}) must be a multiple of {name} ({size}) so that "
                             f"no row is dropped; use e.g. {name}={_largest_divisor_at_most(cfg.batch_size, size)} or "
                             f"batch_size={cfg.batch_size + size - cfg.batch_size % size}.")
    _number(f"{owner}.lr", cfg.lr)
    _number(f"{owner}.max_grad_norm", cfg.max_grad_norm, none_means="no clipping")
    _number(f"{owner}.weight_decay", cfg.weight_decay, strict=False)


def _whole_groups(owner, cfg, name):
    k = getattr(cfg, name)
    _group_size(f"{owner}.{name}", k)
    if cfg.batch_size % k:
        raise ValueError(f"{owner}.batch_size ({cfg.batch_size}) must be a multiple of {name} ({k}): the batch is "
                         f"made of whole groups of {name} responses per prompt")


def ppo_config(cfg):
    _sizes("PPOConfig", cfg, "ppo_epochs")
    for name in ("cliprange", "cliprange_value", "vf_coef", "horizon", "target"):
        _number(f"PPOConfig.{name}", getattr(cfg, name))
    _number("PPOConfig.init_kl_coef", cfg.init_kl_coef, strict=False)
    _interval("PPOConfig.gamma", cfg.gamma, 1.0)
    _interval("PPOConfig.lam", cfg.lam, 1.0)
    _number("PPOConfig.score_clip", cfg.score_clip, none_means="scores unclipped")


def rloo_config(cfg):
    _sizes("RLOOConfig", cfg, "ppo_epochs")
    _whole_groups("RLOOConfig", cfg, "rloo_k")
    _number("RLOOConfig.kl_coef", cfg.kl_coef, strict=False)
    _number("RLOOConfig.cliprange", cfg.cliprange, none_means="no clipping")


def grpo_config(cfg):
    _sizes("GRPOConfig", cfg, "num_iterations")
    _whole_groups("GRPOConfig", cfg, "group_size")
    _number("GRPOConfig.beta", cfg.beta, strict=False)
    _number("GRPOConfig.epsilon", cfg.epsilon)
    _number("GRPOConfig.epsilon_high", cfg.epsilon_high, none_means="epsilon_high = epsilon")
    _grpo_options("GRPOConfig.", cfg.loss_type, cfg.max_completion_length, cfg.importance_sampling_level,
                  cfg.use_bias_correction_kl)
    steps, per_step = cfg.batch_size // cfg.mini_batch_size, cfg.gradient_accumulation_steps
    if per_step is None:            # all of a pass's mini-batches: one AdamW step per pass over the batch
        return
    _integer("GRPOConfig.gradient_accumulation_steps", per_step,
             why=" (or None: all of the batch's mini-batches, one AdamW step per pass)")
    if steps % per_step:
        raise ValueError(f"GRPOConfig.gradient_accumulation_steps ({per_step}) must divide the {steps} mini-batches "
                         f"of a pass (batch_size / mini_batch_size), so that every AdamW step adds up as many; "
                         f"use None for one step per pass over the batch, or 1 for a step per mini-batch")


def method_config(owner, cfg, epochs=None, coefficients=()):
    """A trainer's config, for a method's own module: the sizes, lr, max_grad_norm and weight_decay every config
    has (epochs: the field that counts the passes over the batch, if any), and each field named in coefficients a
    finite number >= 0."""
    _sizes(owner, cfg, epochs)
    for name in coefficients:
        _number(f"{owner}.{name}", getattr(cfg, name), strict=False)


def dpo_config(cfg):
    _sizes("DPOConfig", cfg, "epochs")
    _number("DPOConfig.beta", cfg.beta)
    _label_smoothing("DPOConfig.label_smoothing", cfg.label_smoothing)


# ----------------------------------------------------------------------------------------------------------
# the trainers' batches


def _token_ids(kind, seqs, vocab_size):
    """Each a non-empty 1-D array of integer token ids in [0, V) -> as int64 arrays."""
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
            raise ValueError(f"{kind} {i} has token ids outside [0, {vocab_size}) (min {ids.min()}, max {ids.max()})")
        out.append(ids.astype(np.int64))
    return out


def _fits(queries, responses, block_size):
    longest = max(len(q) for q in queries) + max(len(r) for r in responses)
    if longest > block_size:
        raise ValueError(f"longest query + longest response = {longest} tokens exceeds block_size "
                         f"{block_size}; use shorter prompts or responses")


def rollout_batch(queries, responses, scores, batch_size, block_size, vocab_size):
    """B = batch_size queries and responses, each a non-empty 1-D array of integer token ids in [0, V), that
    fit the model's context together; B finite scores. Returns them as int64 arrays and a float64 (B,) array."""
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"scores must be a 1-D array of {batch_size} numbers, got shape {scores.shape}")
    if not len(queries) == len(responses) == len(scores) == batch_size:
        raise ValueError(f"got {len(queries)} queries, {len(responses)} responses and {len(scores)} scores; "
                         f"each must equal batch_size = {batch_size}")
    _scores(scores, batch_size)
    queries, responses = _token_ids("query", queries, vocab_size), _token_ids("response", responses, vocab_size)
    _fits(queries, responses, block_size)
    return queries, responses, scores.astype(np.float64)


def preference_batch(queries, chosen, rejected, batch_size, block_size, vocab_size):
    """P = batch_size (query, chosen, rejected) triples of valid token ids that fit the model's context -> as int64
    arrays. A message about a response names its side, "chosen: ..." or "rejected: ..."."""
    if not len(queries) == len(chosen) == len(rejected) == batch_size:
        raise ValueError(f"got {len(queries)} queries, {len(chosen)} chosen and {len(rejected)} rejected responses; "
                         f"each must equal batch_size = {batch_size}")
    queries = _token_ids("query", queries, vocab_size)
    out = []
    for side, responses in (("chosen", chosen), ("rejected", rejected)):
        try:
            out.append(_token_ids("response", responses, vocab_size))
            _fits(queries, out[-1], block_size)
        except ValueError as e:
            raise ValueError(f"{side}: {e}") from e
    return (queries, *out)


def groups(queries, k):
    """Each run of k consecutive rows shares one query (the rows are already checked by rollout_batch)."""
    for g in range(0, len(queries), k):
        for j in range(g + 1, g + k):
            if not np.array_equal(queries[j], queries[g]):
                raise ValueError(f"rows {g}..{g + k - 1} must be {k} responses to one prompt, but query {j} differs "
                                 f"from query {g}; put the {k} responses to each prompt in consecutive rows")


def response_lengths(responses, max_completion_length):
    _longest_response(max(len(r) for r in responses), max_completion_length)
