"""How the application samples responses and has them scored: one place for the settings and the calls.

    responses ~ model(. | query)         at most response_tokens new tokens, ending at <|endoftext|> if stop_at_eos
    texts     = query text + response text, without eos    (what a scorer reads, and what a reader sees)
    scores    = scorer.score(texts)                          (log-odds of "positive"; the lexicon: VADER's compound)
    verdicts  = positive if score > 0 (a reward model), or the judge's own bands (the lexicon: positive,
                negative, neutral at its authors' thresholds)

Generation and scoring run forward_batch_size rows at a time, which bounds memory. The chunks also fix the order in
which a generator's numbers are drawn, so the same seed and the same chunk size give the same responses. Rollouts,
evaluations, best-of-n and DPO's pairs all sample through here.
"""
import dataclasses

import numpy as np

from ppo_np.rollout import generate_responses


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    forward_batch_size: int = 16     # rows per forward pass in generation and scoring (and the trainer's passes
                                     # without a graph): bounds memory
    response_tokens: int = 16        # new tokens per response, at most
    stop_at_eos: bool = True         # end a response at <|endoftext|> (see docs/ppo.md, "the reward hack")


def texts_of(tokenizer, queries, responses):
    """Decode query + response, without the eos token: what the reward model reads, and what a reader sees."""
    eos = tokenizer.eos_token_id
    return [tokenizer.decode([int(t) for t in np.concatenate([q, r]) if t != eos]) for q, r in zip(queries, responses)]


def sample(model, tokenizer, queries, sampling, rng):
    """One response per query from the model's full distribution -> list of int arrays (eos kept, see above)."""
    return generate_responses(model, queries, sampling.response_tokens, forward_batch_size=sampling.forward_batch_size,
                              rng=rng, eos_token_id=tokenizer.eos_token_id, stop_at_eos=sampling.stop_at_eos)


def sample_n(model, tokenizer, queries, n, sampling, rng, progress=False):
    """n responses per query -> (each query repeated n times, the responses), query-major, with a progress bar."""
    repeated = [q for q in queries for _ in range(n)]
    rows = sampling.forward_batch_size
    responses = []
    for i in _bar(range(0, len(repeated), rows), progress, "reference samples"):
        responses += sample(model, tokenizer, repeated[i:i + rows], sampling, rng)
    return repeated, responses


def score(scorer, texts, sampling):
    """The scorer's log-odds of each text -> (N,), forward_batch_size texts at a time."""
    return scorer.score(texts, forward_batch_size=sampling.forward_batch_size)


def verdicts(name, scorer, scores):
    """Each text's verdict as 0/1 indicators -> {"<name>_positive": (N,), ...}: a reward model's log-odds > 0, or,
    for a judge with a neutral band (the lexicon, `shares_of`), "<name>_positive", "_negative" and "_neutral"."""
    scores = np.asarray(scores)
    classes = scorer.classes(scores) if hasattr(scorer, "classes") else {"positive": scores > 0}
    return {f"{name}_{verdict}": is_it.astype(np.float64) for verdict, is_it in classes.items()}


def judged(name, scorer, scores):
    """What one scorer says of a set of texts -> {"<name>_mean": mean score, "<name>_positive": share, ...}: the
    vocabulary of every evaluation, rollout log and best-of-n curve."""
    return {f"{name}_mean": float(np.mean(scores)),
            **{key: float(np.mean(v)) for key, v in verdicts(name, scorer, scores).items()}}


def _bar(items, enabled, desc):
    if not enabled:
        return items
    from tqdm.auto import tqdm
    return tqdm(items, desc=desc, unit="batch")
