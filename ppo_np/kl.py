"""The k1, k2, k3 estimators of KL(pi || pi_ref) from J. Schulman, "Approximating KL Divergence" (2020), per token,
with their backward with respect to logpi. Read beside docs/methods.md, section 1.

Shape legend: logprobs, ref_logprobs (B,T) (any shape works: the estimators are elementwise), y ~ pi.
Symbols: logpi = logprobs, logpi_ref = ref_logprobs, and Schulman's ratio r = pi_ref(y) / pi(y), so
log r = ref_logprobs - logprobs. (Schulman samples x ~ q and writes r = p(x)/q(x): his q is our pi, his p our pi_ref.)

    k1 = log pi - log pi_ref                  = -log r           unbiased, negative on some samples
    k2 = 1/2 (log pi - log pi_ref)^2          = 1/2 (log r)^2    biased, >= 0
    k3 = pi_ref/pi - 1 - log(pi_ref/pi)       = (r - 1) - log r  unbiased, >= 0 (GRPO's KL term)

Their expectations under y ~ pi: E[k1] = E[k3] = KL(pi || pi_ref), because E_pi[r - 1] = 0; E[k2] matches the KL
only to second order when pi is close to pi_ref.

Schulman calls k1 high variance, k2 and k3 low variance, and E[k2] an f-divergence. Each holds only with a caveat:
- Low variance is what he observed on close distributions, not a property of k2 and k3. The variance of k3 contains
  E_pi[r^2] = 1 + chi^2(pi_ref || pi), unbounded when pi gives little mass to what pi_ref likes: pi = (0.999, 0.001)
  against pi_ref = (0.5, 0.5) gives k3 about 5000 times the variance of k1, and k2 about 8 times.
- E[k2] = E_pi[f(pi_ref/pi)] with f(u) = 1/2 (log u)^2 has an f-divergence's form, but f is convex only for u <= e.
  It lacks the f-divergences' properties: merging two outcomes can raise it, which no f-divergence allows (the
  data-processing inequality). It is >= 0 and 0 only at pi = pi_ref, since each sample is.

Their gradients are a different matter. Put in a loss as the per-sample number k(logpi(y)) on samples y ~ pi, and
differentiated through logpi only (the sampling is not differentiated: this is what a trainer does), the expected
gradient is E_pi[k'(logpi) grad logpi]. For one distribution (one token given its prefix, or a whole sequence when
k is applied to the sequence's summed log-ratio):

    k1' = 1:                 E_pi[grad logpi] = 0. No gradient in expectation: k1 in a loss only adds noise.
    k2' = logpi - logpi_ref: E_pi[(logpi - logpi_ref) grad logpi] = grad KL(pi || pi_ref).
    k3' = 1 - pi_ref/pi:     E_pi[(1 - pi_ref/pi) grad logpi] = -sum_y pi_ref grad logpi = grad KL(pi_ref || pi),
                             the REVERSE KL: k3 estimates KL(pi || pi_ref) but its gradient is not that KL's.

Summed over the tokens of a response, each token's k is a function of its own conditional distribution, with the
prefix y_<t held fixed: k2 then gives sum_t E_{y_<t ~ pi}[grad KL(pi(.|y_<t) || pi_ref(.|y_<t))] and k3 the same with
the reverse conditional KL. Neither is the gradient of a sequence KL, for two different reasons:
- KL(pi || pi_ref) = sum_t E_{y_<t ~ pi}[KL_t(pi || pi_ref)] draws its prefixes from pi, so its gradient also has the
  term sum_t E_{y_<t ~ pi}[KL_t grad log pi(y_<t)]: how an early token changes which later prefixes occur. k2 misses it.
- KL(pi_ref || pi) = sum_t E_{y_<t ~ pi_ref}[KL_t(pi_ref || pi)] draws its prefixes from pi_ref, which does not move
  with the weights, so its gradient has no such term. k3 has every conditional gradient right but weighs the
  prefixes by pi instead of pi_ref.
tests/methods/test_kl_estimators.py checks every one of these statements by exact enumeration of all sequences of a tiny GPT.
"""
import numpy as np

__all__ = ["k1", "k1_backward", "k2", "k2_backward", "k3", "k3_backward"]


def k1(logprobs, ref_logprobs):
    """k1 = logpi - logpi_ref.   (B,T), (B,T) -> (B,T).  The log-ratio PPO's and RLOO's KL penalty use."""
    assert np.shape(logprobs) == np.shape(ref_logprobs), "logprobs and ref_logprobs: one shape"
    return np.subtract(logprobs, ref_logprobs)


def k1_backward(logprobs, ref_logprobs, dkl):
    """dlogprobs = dkl * dk1/dlogpi = dkl.   (B,T) each -> (B,T).  Zero gradient in expectation (module docstring)."""
    assert np.shape(logprobs) == np.shape(ref_logprobs) == np.shape(dkl), "logprobs, ref_logprobs and dkl: one shape"
    return np.array(dkl, dtype=np.result_type(logprobs, dkl, np.float32))


def k2(logprobs, ref_logprobs):
    """k2 = 1/2 (logpi - logpi_ref)^2.   (B,T), (B,T) -> (B,T).  Biased for KL(pi || pi_ref)."""
    assert np.shape(logprobs) == np.shape(ref_logprobs), "logprobs and ref_logprobs: one shape"
    return 0.5 * np.subtract(logprobs, ref_logprobs) ** 2


def k2_backward(logprobs, ref_logprobs, dkl):
    """dlogprobs = dkl * (logpi - logpi_ref).   (B,T) each -> (B,T).  In expectation grad KL(pi || pi_ref)."""
    assert np.shape(logprobs) == np.shape(ref_logprobs) == np.shape(dkl), "logprobs, ref_logprobs and dkl: one shape"
    return np.multiply(dkl, np.subtract(logprobs, ref_logprobs))


def k3(logprobs, ref_logprobs):
    """k3 = exp(logpi_ref - logpi) - (logpi_ref - logpi) - 1 = pi_ref/pi - 1 - log(pi_ref/pi).   (B,T) -> (B,T).

    Written from the log-ratio, as TRL's GRPO writes it; unbiased for KL(pi || pi_ref) and >= 0 on every sample.
    """
    assert np.shape(logprobs) == np.shape(ref_logprobs), "logprobs and ref_logprobs: one shape"
    log_r = np.subtract(ref_logprobs, logprobs)
    return np.exp(log_r) - log_r - 1.0


def k3_backward(logprobs, ref_logprobs, dkl):
    """dlogprobs = dkl * (1 - pi_ref/pi) = dkl * (1 - exp(logpi_ref - logpi)).   (B,T) each -> (B,T).

    In expectation grad KL(pi_ref || pi), not grad KL(pi || pi_ref) (module docstring). 0 where pi = pi_ref.
    """
    assert np.shape(logprobs) == np.shape(ref_logprobs) == np.shape(dkl), "logprobs, ref_logprobs and dkl: one shape"
    return np.multiply(dkl, 1.0 - np.exp(np.subtract(ref_logprobs, logprobs)))
