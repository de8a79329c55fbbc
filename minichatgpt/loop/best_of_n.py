"""Best-of-n: sample n responses from the reference, keep the one the proxy scores highest. No training.

    KL(best-of-n || reference) <= log n - (n - 1) / n                    (nats; see kl_best_of_n)
    E[judge(pick)] over every n-subset of N >= n samples per prompt      (see best_of_n)

The over-optimisation experiment and the method comparison both draw their best-of-n curve with `curve`.
"""
import math

import numpy as np

from .sampling import verdicts


def kl_best_of_n(n):
    """KL(best-of-n || reference) <= log n - (n - 1) / n nats (the formula Stiennon et al. 2020 and Gao et al. 2022
    use; exact for a continuous distribution of scores, an upper bound otherwise, Beirami et al. 2024)."""
    return math.log(n) - (n - 1) / n


def pick_probabilities(N, n):
    """P[the sample ranked i (0 = highest proxy score) of N is the best of a uniform random n-subset]
    = C(N - 1 - i, n - 1) / C(N, n)  -> (N,). It is the best iff it is drawn and no higher-ranked one is."""
    return np.array([math.comb(N - 1 - i, n - 1) for i in range(N)], dtype=np.float64) / math.comb(N, n)


def best_of_n(proxy_scores, judge_scores, n):
    """The expected judge score of the response the proxy picks among n of the N samples of each prompt.

    proxy_scores, judge_scores (P, N) for P prompts and N >= n samples each -> float. Averaging over every
    n-subset (not only the first n samples) is the unbiased, low-variance estimator; the proxy's ties are broken
    by sample index.
    """
    P, N = proxy_scores.shape
    order = np.argsort(-proxy_scores, axis=1, kind="stable")
    ranked = np.take_along_axis(judge_scores, order, axis=1)            # (P, N), best proxy score first
    return float((ranked @ pick_probabilities(N, n)).mean())


def curve(proxy_scores, judges, scorers, n_max):
    """Best-of-n for n = 1, 2, 4, ... and n_max: KL_bon and, for each judge, the expected mean score of the proxy's
    pick and the expected share of each of its verdicts.

    proxy_scores (P, n_max); judges {name: (P, n_max) scores} (the proxy itself among them to see its own score);
    scorers {name: the scorer that gave them}, whose verdict bands `sampling.verdicts` applies
    -> [{"n", "kl", "<name>_mean" for each judge, then "<name>_positive" (and the lexicon's "_negative",
    "_neutral") for each}].
    """
    ns = sorted({2 ** k for k in range(int(math.log2(n_max)) + 1)} | {n_max})
    shares = {key: is_it for name, scores in judges.items() for key, is_it in verdicts(name, scorers[name], scores).items()}
    return [{"n": n, "kl": kl_best_of_n(n),
             **{f"{name}_mean": best_of_n(proxy_scores, scores, n) for name, scores in judges.items()},
             **{key: best_of_n(proxy_scores, is_it, n) for key, is_it in shares.items()}} for n in ns]
