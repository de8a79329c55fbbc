"""ppo_np's input checks, at the two places where inputs enter: a trainer's config (__post_init__, with the helpers
of the first two sections, so that each condition is written once) and Trainer.step (rollout_batch, DPOTrainer's
preference_batch, and a method's own check: groups, ...). Past them every array is ppo_np's own (batch.layout, the
model, a method's prepare), so the equations in core, kl and the methods' modules check at most their shapes, in one
line: called directly, they take what they are given (docs/ppo.md, section 17). A refusal is a ValueError that names
the field or the row and says what it must be.
"""
import numpy as np

# ----------------------------------------------------------------------------------------------------------
# numbers


def integer(name, value, minimum=1, why=""):
    """An int (not a bool) >= minimum; minimum 1 reads "a positive integer"."""
    if isinstance(value, bool) or not (isinstance(value, (int, np.integer)) and value >= minimum):
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}{why}")


def number(name, value, low=0.0, *, strict=True, none_means=None, why=""):
    """A finite value > low (or >= low unless strict); nan always fails. With none_means, None is allowed too, and
    means that."""
    if none_means is not None:
        if value is None:
            return
        why = f" (or None: {none_means}){why}"
    if not ((value > low if strict else value >= low) and np.isfinite(value)):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low:g}, got {value!r}{why}")


def interval(name, value, high, *, high_open=False, why=""):
    """0 <= value <= high, or < high if high_open."""
    if not (0 <= value and (value < high if high_open else value <= high)):
        raise ValueError(f"{name} must lie in [0, {high:g}{')' if high_open else ']'}, got {value!r}{why}")


def choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def flag(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")


# ----------------------------------------------------------------------------------------------------------
# configs


def method_config(owner, cfg, epochs=None, coefficients=()):
    """What every trainer's config has: positive integer sizes that divide the batch (no row is ever dropped), a
    finite lr > 0, an optional max_grad_norm > 0, a weight_decay >= 0; epochs: the field that counts the passes over
    the batch, if the method has one; each field named in coefficients a finite number >= 0."""
    for name in ("batch_size", "forward_batch_size", "mini_batch_size") + ((epochs,) if epochs else ()):
        integer(f"{owner}.{name}", getattr(cfg, name))
    for name in ("forward_batch_size", "mini_batch_size"):
        size = getattr(cfg, name)
        if cfg.batch_size % size:
            divisor = max(d for d in range(1, min(cfg.batch_size, size) + 1) if cfg.batch_size % d == 0)
            raise ValueError(f"{owner}.batch_size ({cfg.batch_size}) must be a multiple of {name} ({size}) so that "
                             f"no row is dropped; use e.g. {name}={divisor} or "
                             f"batch_size={cfg.batch_size + size - cfg.batch_size % size}.")
    number(f"{owner}.lr", cfg.lr)
    number(f"{owner}.max_grad_norm", cfg.max_grad_norm, none_means="no clipping")
    number(f"{owner}.weight_decay", cfg.weight_decay, strict=False)
    for name in coefficients:
        number(f"{owner}.{name}", getattr(cfg, name), strict=False)


def whole_groups(owner, cfg, name):
    """cfg.<name> = k >= 2 responses per prompt, and a batch of whole groups of k."""
    k = getattr(cfg, name)
    integer(f"{owner}.{name}", k, 2, ": a group-relative advantage compares each response with the other responses "
                                     "to the same prompt, and one response has none")
    if cfg.batch_size % k:
        raise ValueError(f"{owner}.batch_size ({cfg.batch_size}) must be a multiple of {name} ({k}): the batch is "
                         f"made of whole groups of {name} responses per prompt")


# ----------------------------------------------------------------------------------------------------------
# batches


def finite_scores(scores, n, unit="rows"):
    """n finite scores -> as float64; names the first bad rows (units: "rows", "pairs")."""
    scores = np.asarray(scores, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(scores).reshape(n, -1).all(axis=1))
    if bad.size:
        raise ValueError(f"scores at {unit} {bad[:10].tolist()} are nan or inf; the reward model must give finite "
                         "scores (check it on those texts)")
    return scores


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
    """B = batch_size queries and responses, each a non-empty 1-D array of integer token ids in [0, V), that fit the
    model's context together; B finite scores -> them as int64 arrays and a float64 (B,) array."""
    if np.ndim(scores) != 1:
        raise ValueError(f"scores must be a 1-D array of {batch_size} numbers, got shape {np.shape(scores)}")
    if not len(queries) == len(responses) == len(scores) == batch_size:
        raise ValueError(f"got {len(queries)} queries, {len(responses)} responses and {len(scores)} scores; "
                         f"each must equal batch_size = {batch_size}")
    scores = finite_scores(scores, batch_size)
    queries, responses = _token_ids("query", queries, vocab_size), _token_ids("response", responses, vocab_size)
    _fits(queries, responses, block_size)
    return queries, responses, scores


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
