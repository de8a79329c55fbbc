"""gradcheck: compare the engine's analytic gradients with float64 central differences.

For inputs x_1..x_k (ndarrays) and an engine function y = fn(x_1..x_k) (a Tensor of any shape), we check the
gradient of the scalar "fake loss"

    L = sum(y * dout),    dout ~ N(0, 1) fixed by a seed   (dout = 1 when y is a scalar)

as llm.c does: a random weighting exercises every output entry, so a wrong gradient of any one of them shows.
The analytic gradient is y.backward(dout); the numerical one is, per checked entry j of x_i,

    n_j = (L(x_i + eps e_j) - L(x_i - eps e_j)) / (2 eps).

Per input the error is max_j |a_j - n_j| / max(max_j (|a_j| + |n_j|), tiny), a relative error measured against the
size of the whole gradient (so entries that are ~0 do not blow it up). An input passes when
max_j |a_j - n_j| <= atol + rtol * max_j (|a_j| + |n_j|). The report names the worst input.
"""
import dataclasses

import numpy as np

from minigpt_np.tensor import Tensor, no_grad

TINY = 1e-30


@dataclasses.dataclass
class GradcheckReport:
    errors: dict          # input name -> relative error (as in the module docstring)
    abs_errors: dict      # input name -> max |analytic - numerical|
    worst_name: str
    worst_error: float
    n_checked: int        # entries compared over all inputs

    def __str__(self):
        rows = "\n".join(f"  {name:<40s} rel {self.errors[name]:.3e}  abs {self.abs_errors[name]:.3e}"
                         for name in self.errors)
        return (f"gradcheck over {self.n_checked} entries: worst input {self.worst_name!r} "
                f"rel err {self.worst_error:.3e}\n{rows}")


def gradcheck(fn, inputs, eps=1e-6, rtol=1e-6, atol=1e-10, max_entries=None, seed=0):
    """Check fn's engine gradient w.r.t. every float64 ndarray in `inputs` against central differences.

    fn: called with a dict {name: Tensor} (same keys as `inputs`, fresh Tensors each call) and returns a Tensor.
    inputs: {name: float64 ndarray}; the arrays are not modified.
    max_entries: check at most this many entries per input (a seeded random subset); None checks all.
    Returns a GradcheckReport; raises AssertionError carrying the report when an input fails.
    """
    inputs = {name: np.array(x, dtype=np.float64) for name, x in inputs.items()}
    for name, x in inputs.items():
        if x.dtype != np.float64:
            raise ValueError(f"gradcheck: input {name!r} must be float64")
    # a seed sequence of its own, so dout never coincides with an input the caller drew with the same seed
    rng = np.random.default_rng([seed, 20240601])

    # analytic gradient of L = sum(y * dout)
    tensors = {name: Tensor(x.copy(), requires_grad=True) for name, x in inputs.items()}
    y = fn(tensors)
    dout = np.ones_like(y.data) if y.data.size == 1 else rng.standard_normal(y.data.shape)
    y.backward(dout)

    def fake_loss(values):
        with no_grad():
            out = fn({name: Tensor(x) for name, x in values.items()})
        return float(np.sum(out.data * dout))

    errors, abs_errors, n_checked, failed = {}, {}, 0, []
    for name, x in inputs.items():
        analytic = tensors[name].grad
        if analytic is None:
            analytic = np.zeros_like(x)    # the engine says: no dependence. The numbers must agree.
        if analytic.shape != x.shape:
            raise AssertionError(f"gradcheck: gradient of {name!r} has shape {analytic.shape}, input has {x.shape}")
        entries = np.arange(x.size)
        if max_entries is not None and x.size > max_entries:
            entries = np.sort(rng.choice(x.size, size=max_entries, replace=False))
        a = analytic.reshape(-1)[entries]
        n = np.empty(len(entries))
        values = dict(inputs)
        for j, flat in enumerate(entries):
            xp = x.copy()
            xp.reshape(-1)[flat] += eps
            values[name] = xp
            plus = fake_loss(values)
            xp.reshape(-1)[flat] -= 2 * eps
            minus = fake_loss(values)
            n[j] = (plus - minus) / (2 * eps)
        diff = float(np.max(np.abs(a - n))) if len(entries) else 0.0
        scale = float(np.max(np.abs(a) + np.abs(n))) if len(entries) else 0.0
        errors[name] = diff / max(scale, TINY)
        abs_errors[name] = diff
        n_checked += len(entries)
        if diff > atol + rtol * scale:
            failed.append(name)

    worst = max(errors, key=errors.get)
    report = GradcheckReport(errors, abs_errors, worst, errors[worst], n_checked)
    if failed:
        raise AssertionError(f"gradcheck FAILED for {failed}; {report}")
    return report
