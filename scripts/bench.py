"""Benchmark the NumPy GPT (minigpt_np) against the same GPT in PyTorch, and KV-cache generation against recomputation.

    python scripts/bench.py [--repeats 10] [--quick] [--threads N] [--default-malloc] [--reference]

Times, in one run:
  * the BLAS peak: one float32 matrix product of 2048 x 2048 by 2048 x 2048 with the same threads, in GFLOP/s; every
    case below is also printed as a fraction of it;
  * the pipeline's own pretraining step: `minigpt_np.pretrain.train_step` (forward, backward, global-norm clipping
    to 1.0, AdamW with the pretraining defaults) on the default GPTConfig (vocab 4096, block 64, 4 layers x 4 heads
    x 128) at batch 16, against the same step in PyTorch, clipping included;
  * a full training step (forward, backward, AdamW, no clipping) of the same GPT-2 (pre-LN, tanh GELU, tied head),
    same weights, float32, in NumPy and in PyTorch on the CPU with the same number of threads, at vocab 2048, block
    64, 4 x 4 x 128, batch 32, and at a larger size (block 128, 6 x 6 x 192, batch 16). The PyTorch GPT is written
    below in plain torch ops (addmm for the linears, explicit masked softmax attention). NumPy runs the fast kernels
    (`minigpt_np.fast`), its forward and backward as two micro-batches on two cores
    (`minigpt_np.fast.pretrain.loss_and_gradients`), PyTorch's as one batch on its intra-op threads; with
    --reference, the same step on the reference kernels too (`minigpt_np.ops`, the plain equations), for its ratio
    to PyTorch beside the fast kernels';
  * for each of these steps, its matrix products alone ("numpy products"): the same shapes and layouts on random
    operands, as two micro-batches on two cores, with no other work between them. A step split this way cannot be
    faster with this BLAS. The gap between the two rows is the rest of the step (GELU, softmax, LayerNorm,
    cross-entropy, biases, AdamW, the autograd), plus any slowdown that rest causes the products;
  * greedy generation of 64 new tokens after an 8-token prompt (batch 8, default width, block 128), in NumPy,
    with the KV cache (`mg.generate`) and by re-running the whole sequence for every new token.
Each case runs warm-up iterations, then the NumPy, products-alone and PyTorch (or KV and recompute) repeats
interleaved, so a change in machine load hits every side alike; the figure is the median. The reference kernels'
step (--reference) is timed after them, its repeats on their own: its products run on every BLAS thread, which keep
spinning after it and would slow the step timed next. Other processes on the machine distort the figures,
multi-threaded BLAS most of all (a waiting thread spins): read them together with the load average printed. So does
the engine before: a thread of it that still spins takes a core from the next step (PyTorch's pipeline step took about
twice as long right after a NumPy step whose products used two OpenBLAS threads; docs/speed.md).

Like the minichatgpt command line, the benchmark first asks glibc's malloc to keep the memory a step frees
(`minigpt_np.fast.memory.keep_freed_memory`; it applies to the whole process, so to every engine). --default-malloc
leaves malloc as it is, to show what the page faults cost.

FLOPs are counted analytically, for matmuls only (2 FLOPs per multiply-add), with the attention score matrix counted
in full (as the PaLM MFU formula does, although half of it is masked):
    N = L * 12 C^2 + V C                      matmul weights: qkv 3C^2, attention proj C^2, MLP 8C^2; tied lm_head V C
    forward, per token attending to S keys:   2 N + 4 L C S             (q k^T and att v: 2 C S each, per layer)
    training step on B x T tokens:            3 x forward = (6 N + 12 L C T) B T
Peak memory (MB) is the growth of the resident set over one step (after a warm-up step), measured untimed in a fresh
Python process whose malloc hands every large freed block back to the kernel (MALLOC_MMAP_THRESHOLD_), so the
resident set follows the live arrays: Linux's high-water mark VmHWM (reset through /proc/self/clear_refs) minus
VmRSS before the step; where that is unavailable, resource.getrusage's ru_maxrss, which cannot be reset.

The last line printed is JSON: train_step_ratio (NumPy ms / PyTorch ms, 4x4x128), train_step_ratio_large,
pipeline_step_ratio (and each with the suffix _reference, for the reference kernels, with --reference),
kv_cache_speedup (recompute ms / KV-cache ms for 64 new tokens), the BLAS peak, each case's
fraction of it (the products alone included), the raw milliseconds and the conditions. It prints figures; it
never asserts on them.
"""
import argparse
import dataclasses
import functools
import json
import logging
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as TF

import minigpt_np as mg
from minigpt_np import pretrain
from minigpt_np.fast import blocks
from minigpt_np.fast import ops as fast_ops
from minigpt_np.fast.cores import on_two_cores
from minigpt_np.fast.memory import keep_freed_memory
from minigpt_np.pretrain import PretrainConfig, first_half


@dataclasses.dataclass(frozen=True)
class TrainCase:
    cfg: mg.GPTConfig
    batch: int
    betas: tuple = (0.9, 0.999)   # AdamW's
    grad_clip: float = None       # global-norm clipping before the update (None: none)


PRETRAIN = PretrainConfig()
SIZES = {
    "pipeline": TrainCase(mg.GPTConfig(), PRETRAIN.batch_size, (PRETRAIN.beta1, PRETRAIN.beta2), PRETRAIN.grad_clip),
    "default": TrainCase(mg.GPTConfig(vocab_size=2048, block_size=64, n_layer=4, n_head=4, n_embd=128), 32),
    "large": TrainCase(mg.GPTConfig(vocab_size=2048, block_size=128, n_layer=6, n_head=6, n_embd=192), 16),
}
GEN_CFG = mg.GPTConfig(vocab_size=2048, block_size=128, n_layer=4, n_head=4, n_embd=128)
GEN_BATCH, GEN_PROMPT, GEN_NEW = 8, 8, 64
LR, WEIGHT_DECAY = 1e-3, 0.1
PEAK_N = 2048                     # the BLAS peak: one float32 (PEAK_N x PEAK_N) @ (PEAK_N x PEAK_N) product


# ------------------------------------------------------------------------------------------------ FLOPs
def matmul_params(cfg):
    """N = L 12 C^2 + V C: the weights that take part in a matmul (biases, LayerNorms and wpe do not)."""
    return cfg.n_layer * 12 * cfg.n_embd ** 2 + cfg.vocab_size * cfg.n_embd


def forward_flops(cfg, n_tokens, n_keys):
    """2 N + 4 L C S per token whose query attends to S keys."""
    return n_tokens * (2 * matmul_params(cfg) + 4 * cfg.n_layer * cfg.n_embd * n_keys)


def train_flops(cfg, batch):
    """(6 N + 12 L C T) B T: forward plus a backward of twice its cost."""
    return 3 * forward_flops(cfg, batch * cfg.block_size, cfg.block_size)


def kv_generate_flops(cfg, batch, prompt, new):
    """The prompt once (logits at every prompt position), then one position per new token after the first."""
    flops = forward_flops(cfg, batch * prompt, prompt)
    for s in range(prompt + 1, prompt + new):
        flops += forward_flops(cfg, batch, s)
    return flops


def recompute_generate_flops(cfg, batch, prompt, new):
    """A full forward over all s positions for every new token."""
    return sum(forward_flops(cfg, batch * s, s) for s in range(prompt, prompt + new))


# ------------------------------------------------------------------------------------------------ the PyTorch GPT
def torch_params(model):
    """The NumPy model's weights as float32 torch leaves, keyed by the same Hugging Face names."""
    return {name: torch.tensor(p.data, dtype=torch.float32, requires_grad=True) for name, p in model.named_parameters()}


def torch_linear(x, w, b):
    """y = x W + b with the bias fused into the matmul (addmm), as nn.Linear does.   x (B, T, C), W (C, OC)."""
    return torch.addmm(b, x.reshape(-1, x.shape[-1]), w).view(*x.shape[:-1], w.shape[1])


def torch_gpt_loss(P, cfg, idx, targets):
    """The same GPT-2 in plain torch ops: pre-LN, causal attention with explicit softmax, tanh GELU, tied head."""
    B, T = idx.shape
    C, H = cfg.n_embd, cfg.n_head
    D = C // H
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    x = P["transformer.wte.weight"][idx] + P["transformer.wpe.weight"][:T]
    for i in range(cfg.n_layer):
        h = f"transformer.h.{i}."
        a = TF.layer_norm(x, (C,), P[h + "ln_1.weight"], P[h + "ln_1.bias"], 1e-5)
        qkv = torch_linear(a, P[h + "attn.c_attn.weight"], P[h + "attn.c_attn.bias"])
        q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in qkv.split(C, dim=-1))
        att = (q @ k.transpose(-1, -2)) * (1.0 / D ** 0.5)
        att = att.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + torch_linear(y, P[h + "attn.c_proj.weight"], P[h + "attn.c_proj.bias"])
        m = TF.layer_norm(x, (C,), P[h + "ln_2.weight"], P[h + "ln_2.bias"], 1e-5)
        m = TF.gelu(torch_linear(m, P[h + "mlp.c_fc.weight"], P[h + "mlp.c_fc.bias"]), approximate="tanh")
        x = x + torch_linear(m, P[h + "mlp.c_proj.weight"], P[h + "mlp.c_proj.bias"])
    x = TF.layer_norm(x, (C,), P["transformer.ln_f.weight"], P["transformer.ln_f.bias"], 1e-5)
    logits = x @ P["transformer.wte.weight"].T
    return TF.cross_entropy(logits.view(-1, cfg.vocab_size), targets.view(-1))


# ------------------------------------------------------------------------------------------------ steps
def make_numpy_trainer(model, case, idx, targets, kernels="fast"):
    """One training step as pretraining takes it, on `kernels`: `loss_and_gradients` (forward and backward; with
    the fast kernels, two micro-batches on two cores), AdamW (`train_step` when clipping)."""
    optimizer = mg.AdamW(model.named_parameters(), lr=LR, betas=case.betas, weight_decay=WEIGHT_DECAY)
    windows = np.concatenate([idx, targets[:, -1:]], axis=1)       # the pipeline's (B, T+1) windows

    def step():
        with mg.kernels.using(kernels):
            if case.grad_clip is not None:
                return pretrain.train_step(model, optimizer, windows, LR, case.grad_clip)[0]
            loss = pretrain.loss_and_gradients(model, windows)
            optimizer.step()
            return loss
    return step, model.zero_grad


def make_torch_trainer(P, case, idx, targets):
    decay = [p for p in P.values() if p.ndim >= 2]
    no_decay = [p for p in P.values() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=LR, betas=case.betas)
    idx_t, targets_t = torch.from_numpy(idx), torch.from_numpy(targets)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = torch_gpt_loss(P, case.cfg, idx_t, targets_t)
        loss.backward()
        if case.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(P.values(), case.grad_clip)
        optimizer.step()
        return loss.item()
    return step, lambda: optimizer.zero_grad(set_to_none=True)


def make_products_step(cfg, batch):
    """The matrix products of one NumPy training step and nothing else, run as `loss_and_gradients` runs the step:
    two micro-batches at once, the BLAS on one thread each (`cores.on_two_cores`). Its time is what the BLAS alone
    asks of a step split this way, a floor under any speed-up of the rest."""
    half = first_half(batch)
    parts = step_products(cfg, half, seed=0), step_products(cfg, batch - half, seed=1)
    return lambda: on_two_cores(*(functools.partial(run_products, part) for part in parts))


def step_products(cfg, batch, seed):
    """The products of one forward and backward on a micro-batch of `batch` windows, as (a, b, out) operands for
    np.matmul(a, b, out=out), random float32 in the layouts of `minigpt_np.fast.ops`, with arrays of their own for every
    layer (as the engine keeps each layer's activations): per layer, four linears (y = x W; dx = dy W^T,
    dW = x^T dy) and attention's six products; then the tied head's three (logits = x E^T; dx = dlogits E,
    dE = dlogits^T x)."""
    B, T, C, V = batch, cfg.block_size, cfg.n_embd, cfg.vocab_size
    rng = np.random.default_rng(seed)

    def rand(*shape):
        return rng.standard_normal(shape, dtype=np.float32)
    products = []
    for _ in range(cfg.n_layer):
        for c_in, c_out in ((C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)):         # qkv, attention proj, MLP fc, proj
            x, w, dy = rand(B * T, c_in), rand(c_in, c_out), rand(B * T, c_out)
            products += [(x, w, np.empty_like(dy)), (dy, w.T, np.empty_like(x)), (x.T, dy, np.empty_like(w))]
        products += attention_products(rand, B, T, C, cfg.n_head)
    x, wte, dlogits = rand(B * T, C), rand(V, C), rand(B * T, V)
    products += [(x, wte.T, np.empty_like(dlogits)), (dlogits, wte, np.empty_like(x)),
                 (dlogits.T, x, np.empty_like(wte))]
    return products


def attention_products(rand, B, T, C, H):
    """One layer's attention products, as the fast `attention_forward` and `attention_backward` compute them: over
    head-split views of (B, T, 3C) and (B, T, C) arrays, with key-major scores (S, T), q scaled into a copy in its
    own memory order, and cut into the batch-row blocks that `blocks.in_row_blocks` hands them."""
    q, k, v = (fast_ops.split_heads(part, H) for part in np.split(rand(B, T, 3 * C), 3, axis=-1))      # (B,H,T,D)
    q_scaled = q * np.float32(1.0 / np.sqrt(C // H))
    y, dy = fast_ops.split_heads(np.empty((B, T, C), np.float32), H), fast_ops.split_heads(rand(B, T, C), H)
    att, ds = rand(B, H, T, T), rand(B, H, T, T)
    dq, dk, dv = (np.empty(q.shape, np.float32) for _ in range(3))
    products = []

    def block(q, q_scaled, k, v, att, ds, y, dy, dq, dk, dv):
        products.extend([(k, q_scaled.swapaxes(-1, -2), att), (att.swapaxes(-1, -2), v, y),               # forward
                         (att, dy, dv), (v, dy.swapaxes(-1, -2), ds), (ds.swapaxes(-1, -2), k, dq), (ds, q, dk)])
    blocks.in_row_blocks(block, q, q_scaled, k, v, att, ds, y, dy, dq, dk, dv)
    return products


def run_products(products):
    """out = a @ b for every (a, b, out) of `step_products`, in order."""
    for a, b, out in products:
        np.matmul(a, b, out=out)


def products_flops(products):
    """2 m k n per product (m, k) @ (k, n), times its batch dimensions."""
    return sum(2 * math.prod(out.shape) * a.shape[-1] for a, _, out in products)


def generate_recompute(model, idx, max_new_tokens):
    """Greedy decoding without a cache: every new token re-runs the whole sequence."""
    out = idx
    with mg.no_grad():
        for _ in range(max_new_tokens):
            logits = model(out).data[:, -1]                    # (B, V)
            out = np.concatenate([out, logits.argmax(axis=-1)[:, None]], axis=1)
    return out


# ------------------------------------------------------------------------------------------------ measuring
def timed(fn):
    """(wall ms, minor page faults) of one call: faults show memory handed back by malloc and touched again."""
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    fn()
    ms = 1e3 * (time.perf_counter() - start)
    return ms, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def interleaved_medians(fns, warmup, repeats):
    """Run each function `warmup` times, then `repeats` rounds of all of them in turn.

    Returns, per function, (median ms, mean page faults per call)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    runs = [[] for _ in fns]
    for _ in range(repeats):
        for fn, r in zip(fns, runs):
            r.append(timed(fn))
    return [(statistics.median(ms for ms, _ in r), statistics.mean(f for _, f in r)) for r in runs]


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def peak_rss_growth_mb(fn, before):
    """Growth of the resident set while fn() runs, in MB: VmHWM after resetting it, minus VmRSS before.

    Runs in a fresh process (see `memory_probe`) whose malloc returns every large block to the system when it is
    freed (MALLOC_MMAP_THRESHOLD_), so the resident set follows the live arrays rather than malloc's free lists.
    """
    fn()                                                 # warm-up: lazily created state (torch's AdamW moments)
    before()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                                 # resets VmHWM to the current RSS (Linux >= 4.0)
        rss_before = _status_kb("VmRSS")
        fn()
        return (_status_kb("VmHWM") - rss_before) / 1024
    except OSError:
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, kB on Linux
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) * scale / 1024 ** 2


def memory_probe(case, engine):
    """Peak resident-set growth (MB) of one step of `engine` on `case`, measured here: call in a fresh process."""
    if case in SIZES:
        steps = build_training(case)
        fn, before = steps[engine]
    else:
        fn, before = build_generation()[engine], (lambda: None)
    return peak_rss_growth_mb(fn, before)


def measure_memory(case, engine, threads):
    """Run `memory_probe` in a fresh Python process, so earlier cases leave nothing resident; MB or nan."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads), MINIGPT_NP_THREADS=str(blocks.threads()))
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-probe", case, engine]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    try:
        return float(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        logging.warning("memory probe %s/%s failed: %s", case, engine, done.stderr.strip()[-500:])
        return float("nan")


def blas_threads():
    """Threads numpy's BLAS uses (threadpoolctl if installed, else the core count)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return os.cpu_count() or 1
    counts = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    return max(counts) if counts else os.cpu_count() or 1


def set_blas_threads(n):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        raise SystemExit("--threads needs threadpoolctl (pip install threadpoolctl), or set OPENBLAS_NUM_THREADS")
    return threadpool_limits(limits=n, user_api="blas")


def build_training(size):
    """The same GPT and batch in NumPy (fast and reference kernels, each on its own copy) and torch:
    {"numpy": (step, zero_grad), "reference": (step, zero_grad), "torch": (step, zero_grad)}."""
    case = SIZES[size]
    cfg = case.cfg
    model, reference = mg.GPT(cfg, dtype=np.float32, seed=0), mg.GPT(cfg, dtype=np.float32, seed=0)
    P = torch_params(model)
    windows = np.random.default_rng(1).integers(0, cfg.vocab_size, (case.batch, cfg.block_size + 1))
    idx, targets = np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, 1:])
    return {"numpy": make_numpy_trainer(model, case, idx, targets),
            "reference": make_numpy_trainer(reference, case, idx, targets, kernels="reference"),
            "torch": make_torch_trainer(P, case, idx, targets)}


def build_generation():
    """{"kv": generate with the cache, "recompute": generate re-running the sequence}, each returning the tokens."""
    model = mg.GPT(GEN_CFG, dtype=np.float32, seed=0)
    prompt = np.random.default_rng(2).integers(0, GEN_CFG.vocab_size, (GEN_BATCH, GEN_PROMPT))
    return {"kv": lambda: mg.generate(model, prompt, GEN_NEW, temperature=0),
            "recompute": lambda: generate_recompute(model, prompt, GEN_NEW)}


def blas_peak_gflops(repeats):
    """GFLOP/s of one float32 (2048 x 2048) @ (2048 x 2048) product with numpy's BLAS as configured: the median of
    `repeats` products after one warm-up. The ceiling every case is measured against."""
    rng = np.random.default_rng(3)
    a, b = (rng.standard_normal((PEAK_N, PEAK_N)).astype(np.float32) for _ in range(2))
    out = a @ b
    ms = statistics.median(timed(lambda: np.matmul(a, b, out=out))[0] for _ in range(repeats))
    return 2 * PEAK_N ** 3 / ms / 1e6


def bench_training(size, warmup, repeats, threads, reference=False):
    """The case's fast NumPy step, its products alone and PyTorch's step, interleaved (and the reference kernels'
    step, if asked) -> (table rows, figures)."""
    case = SIZES[size]
    cfg, batch = case.cfg, case.batch
    steps = build_training(size)
    (np_step, _), (ref_step, _), (torch_step, _) = steps["numpy"], steps["reference"], steps["torch"]
    products = make_products_step(cfg, batch)
    loss_np, loss_torch = np_step(), torch_step()          # same weights, same batch: the same first loss
    # PyTorch's step follows the products, whose BLAS ran on one thread per half: no OpenBLAS thread left spinning
    (ms_np, faults_np), (ms_products, faults_products), (ms_torch, faults_torch) = interleaved_medians(
        [np_step, products, torch_step], warmup, repeats)
    engines = [("numpy", "numpy", ms_np, faults_np), ("torch", "torch", ms_torch, faults_torch)]
    if reference:   # after the others, not among them: its BLAS threads keep spinning and would slow the next step
        engines.append(("numpy reference", "reference", *interleaved_medians([ref_step], warmup, repeats)[0]))
    del steps, np_step, ref_step, torch_step, products
    tokens, flops = batch * cfg.block_size, train_flops(cfg, batch)
    clip = "" if case.grad_clip is None else f", clip {case.grad_clip:g}"
    shape = f"{cfg.n_layer}x{cfg.n_head}x{cfg.n_embd} V{cfg.vocab_size} T{cfg.block_size} B{batch}{clip}"
    rows = [(f"train {size} ({shape})", label, ms, tokens / ms * 1e3, flops / ms / 1e6,
             measure_memory(size, engine, threads), faults) for label, engine, ms, faults in engines]
    rows.append((f"train {size} ({shape})", "numpy products", ms_products, tokens / ms_products * 1e3,
                 flops / ms_products / 1e6, float("nan"), faults_products))
    report = {"ms_numpy": ms_np, "ms_torch": ms_torch, "ms_products": ms_products,
              "first_loss_abs_diff": abs(loss_np - loss_torch),
              "faults_numpy": faults_np, "faults_torch": faults_torch,
              "gflops_numpy": flops / ms_np / 1e6, "gflops_torch": flops / ms_torch / 1e6,
              "gflops_products": flops / ms_products / 1e6}
    if reference:
        report.update(ms_reference=engines[2][2], gflops_reference=flops / engines[2][2] / 1e6)
    return rows, report


def bench_generation(warmup, repeats, threads):
    fns = build_generation()
    same = bool(np.array_equal(fns["kv"](), fns["recompute"]()))
    (ms_kv, faults_kv), (ms_re, faults_re) = interleaved_medians([fns["kv"], fns["recompute"]], warmup, repeats)
    mem_kv, mem_re = measure_memory("generate", "kv", threads), measure_memory("generate", "recompute", threads)
    tokens = GEN_BATCH * GEN_NEW
    shape = f"{GEN_CFG.n_layer}x{GEN_CFG.n_head}x{GEN_CFG.n_embd} B{GEN_BATCH} {GEN_PROMPT}+{GEN_NEW}"
    rows = [(f"generate ({shape})", "numpy KV cache", ms_kv, tokens / ms_kv * 1e3,
             kv_generate_flops(GEN_CFG, GEN_BATCH, GEN_PROMPT, GEN_NEW) / ms_kv / 1e6, mem_kv, faults_kv),
            (f"generate ({shape})", "numpy recompute", ms_re, tokens / ms_re * 1e3,
             recompute_generate_flops(GEN_CFG, GEN_BATCH, GEN_PROMPT, GEN_NEW) / ms_re / 1e6, mem_re, faults_re)]
    return rows, {"ms_kv": ms_kv, "ms_recompute": ms_re, "same_tokens": same}


def print_table(rows, peak):
    header = ("case", "engine", "ms/step", "tokens/s", "GFLOP/s", "of peak", "peak MB", "faults/step")
    width = max(len(r[0]) for r in rows)
    print(f"{header[0]:<{width}}  {header[1]:<16}{header[2]:>10}{header[3]:>11}{header[4]:>9}{header[5]:>9}"
          f"{header[6]:>9}{header[7]:>13}")
    for case, engine, ms, tps, gflops, mem, faults in rows:
        memory = "" if math.isnan(mem) else f"{mem:.1f}"    # not measured for the products alone
        print(f"{case:<{width}}  {engine:<16}{ms:>10.1f}{tps:>11.0f}{gflops:>9.1f}{gflops / peak:>9.1%}{memory:>9}"
              f"{faults:>13.0f}")


def run_benchmark(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats per case (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up iterations per case")
    parser.add_argument("--quick", action="store_true", help="3 repeats and 1 warm-up: a rough figure in seconds")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for numpy's BLAS and torch (default: what numpy's BLAS uses); minigpt_np's "
                             "elementwise blocks use MINIGPT_NP_THREADS, or 1")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc returning freed memory to the kernel (the page faults it costs "
                             "show in faults/step); by default it keeps it, as the minichatgpt command line does")
    parser.add_argument("--reference", action="store_true",
                        help="also time each training step on the reference kernels (minigpt_np.ops, the plain "
                             "equations), after the other engines, and print their ratio to PyTorch")
    parser.add_argument("--memory-probe", nargs=2, metavar=("CASE", "ENGINE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    mg.kernels.use("fast")                              # the engine as the command line runs it
    if args.memory_probe:                               # the fresh process started by measure_memory
        print(memory_probe(*args.memory_probe))
        return None
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    repeats, warmup = (3, 1) if args.quick else (args.repeats, args.warmup)
    limits = set_blas_threads(args.threads) if args.threads else None
    malloc = "default" if args.default_malloc or not keep_freed_memory() else "keep freed memory"
    threads = blas_threads()
    torch.set_num_threads(threads)
    load_before = os.getloadavg()

    peak = blas_peak_gflops(max(repeats, 5))
    rows, report = [], {}
    for size in SIZES:
        size_rows, r = bench_training(size, warmup, repeats, threads, args.reference)
        rows += size_rows
        report[size] = r
    gen_rows, gen = bench_generation(warmup, repeats, threads)
    rows += gen_rows
    print_table(rows, peak)
    print(f"BLAS peak {peak:.1f} GFLOP/s (float32 {PEAK_N}^3 matmul); threads {threads} (numpy BLAS and torch), "
          f"{blocks.threads()} for minigpt_np's elementwise blocks; "
          f"malloc {malloc}; load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after; median of "
          f"{repeats} interleaved repeats after {warmup} warm-up; peak MB = resident-set growth over one step; "
          f"faults/step = minor page faults (memory malloc returned to the kernel and touched again)")
    summary = {
        "train_step_ratio": report["default"]["ms_numpy"] / report["default"]["ms_torch"],
        "train_step_ratio_large": report["large"]["ms_numpy"] / report["large"]["ms_torch"],
        "pipeline_step_ratio": report["pipeline"]["ms_numpy"] / report["pipeline"]["ms_torch"],
        **({f"{key}_reference": report[size]["ms_reference"] / report[size]["ms_torch"] for key, size in
            (("train_step_ratio", "default"), ("train_step_ratio_large", "large"), ("pipeline_step_ratio", "pipeline"))}
           if args.reference else {}),
        "kv_cache_speedup": gen["ms_recompute"] / gen["ms_kv"],
        "blas_peak_gflops": peak,
        **{f"{size}_fraction_of_peak_{engine}": report[size][f"gflops_{engine}"] / peak
           for size in SIZES for engine in ("numpy", "torch", "products")},
        **{f"{size}_ms_products": report[size]["ms_products"] for size in SIZES},
        "pipeline_ms_numpy": report["pipeline"]["ms_numpy"], "pipeline_ms_torch": report["pipeline"]["ms_torch"],
        "train_ms_numpy": report["default"]["ms_numpy"], "train_ms_torch": report["default"]["ms_torch"],
        "train_large_ms_numpy": report["large"]["ms_numpy"], "train_large_ms_torch": report["large"]["ms_torch"],
        "generate_kv_ms": gen["ms_kv"], "generate_recompute_ms": gen["ms_recompute"],
        "generate_same_tokens": gen["same_tokens"],
        "train_page_faults_numpy": report["default"]["faults_numpy"],
        "train_page_faults_torch": report["default"]["faults_torch"],
        "first_loss_abs_diff": max(report[s]["first_loss_abs_diff"] for s in SIZES),
        "kernels": "fast", "threads": threads, "elementwise_threads": blocks.threads(), "malloc": malloc,
        "repeats": repeats,
        "warmup": warmup,
        "loadavg_1min_before": round(load_before[0], 2), "loadavg_1min_after": round(os.getloadavg()[0], 2),
        "numpy": np.__version__, "torch": torch.__version__, "python": platform.python_version(),
    }
    print(json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in summary.items()}))
    if limits is not None:
        limits.restore_original_limits()
    return summary


def main(argv=None):
    """Console entry point: returns nothing, so the exit status is 0."""
    run_benchmark(argv)


if __name__ == "__main__":
    main()
