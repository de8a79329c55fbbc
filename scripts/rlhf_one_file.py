"""RLHF in one file: PPO on a finished run of the main job, top to bottom, each equation beside the section of
docs/ppo.md that derives it. Read it after the engine's minigpt_np/tensor.py, ops.py and model.py.

    python scripts/rlhf_one_file.py --name default --steps 3
    python scripts/rlhf_one_file.py --name default --out one_file     # keep its log and policy in one_file/

It opens the run read-only through the finished-run object (which checks every file's sha256 first), takes the
run's tokenizer, pretrained GPT and reward model, and PPO's settings as the run recorded them, and runs the loop of
TRL 0.1's PPOTrainer: sample prompts and generate; score; the policy's, the reference's and the value head's forward
passes; the KL-penalised rewards and GAE; the clipped-surrogate and value losses with their per-token gradients; the
GPT's backward, the clip and the AdamW step; the stats under TRL's names. Nothing is written into the run: the log
and the policy go to --out, or nowhere.

It is a copy, on purpose (as CleanRL's ppo.py is), of what ppo_np spreads over core.py, batch.py, skeleton.py,
update.py and ppo.py, and imports nothing from there. tests/methods/test_rlhf_one_file.py holds the two equal: the same
rollouts give the same stats, weights and optimizer state, to 1e-12 at float64. Started from the run's own policy,
it repeats the run's ppo_log.jsonl (its last line says how closely), which is why it needs a finished PPO run.
"""
import json
import os
import sys

import numpy as np

import minigpt_np as mg
from minichatgpt.run.finished_run import FinishedRun, main_job, trained_method
from minichatgpt.settings.options import Parser, UsageError
from minichatgpt.loop.rlhf import PromptStream
from minichatgpt.run.run_folder import DamagedFile, Refused, check_name

SHOWN = ("env/reward_mean", "objective/kl", "ppo/loss/total", "ppo/policy/clipfrac", "ppo/val/var_explained")


def parse_args(argv):
    p = Parser(prog="rlhf_one_file.py", description="PPO on a finished run, in one file (see its docstring)")
    p.add_argument("--name", default="default", help="the finished PPO run, a folder under --runs-dir")
    p.add_argument("--runs-dir", default="runs", help="where run folders are (default: runs)")
    p.add_argument("--steps", type=int, default=None, help="PPO steps (default: the run's own number)")
    p.add_argument("--out", default=None, help="a new folder for ppo_log.jsonl and gpt_ppo.npz (default: none)")
    p.add_argument("--cache-dir", default=None, help="where the default corpus is cached (default: as minichatgpt)")
    args = p.parse_args(argv)
    try:
        args.run_dir = os.path.join(args.runs_dir, check_name(args.name))
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be a positive integer, got {args.steps}")
    if args.out is not None and os.path.exists(args.out) and (not os.path.isdir(args.out) or os.listdir(args.out)):
        raise UsageError(f"--out {args.out} exists and is not an empty folder; give a new folder")
    if args.out is not None and os.path.realpath(args.out).startswith(os.path.realpath(args.run_dir) + os.sep):
        raise UsageError(f"--out {args.out} lies inside the run folder, which this script only reads; give a folder "
                         "outside it")
    return args


def open_run(args):
    """The finished PPO run --name -> FinishedRun; Refused, in one line that says what to run first, otherwise."""
    run = FinishedRun.open(args.run_dir, args.cache_dir)      # refuses an unfinished run, a changed file, a link
    method = trained_method(run.manifest)
    if method != "ppo":
        other = os.path.join(args.runs_dir, f"{args.name}-ppo")
        raise Refused(f"{args.run_dir} is a finished {method} run, and this script repeats a PPO run's stage with its "
                      f"settings: run {main_job(other, '--method', 'ppo')} first (with the other options of "
                      f"{args.name}), then pass --name {args.name}-ppo")
    return run


# ----------------------------------------------------------------------------------------------------------
# the math the step shares (docs/ppo.md, sections 1, 4 and 13)


def log_softmax(logits):
    """log p = logits - logsumexp(logits), shifted by the max so that exp never overflows.  (..., V) -> (..., V)"""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def logprobs_from_logits(logits, labels):
    """Section 1: log pi(y_t) = logits[t, y_t] - logsumexp(logits[t]).  (b, T, V), (b, T) -> (b, T)"""
    return np.take_along_axis(log_softmax(logits), labels[..., None], axis=-1)[..., 0]


def entropy_from_logits(logits):
    """Section 13: -sum_v p_v log p_v = logsumexp(l) - sum_v p_v l_v, on logits shifted by their max.  -> (b, T)"""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(shifted)
    sumexp = probs.sum(axis=-1, keepdims=True)
    probs /= sumexp
    return np.log(sumexp[..., 0]) - (probs * shifted).sum(axis=-1)


def masked_mean(x, m):
    """Section 4: sum_t m_t x_t / N over the N valid tokens (m boolean); padding never enters the sum."""
    return float(np.where(m, x, 0.0).sum() / np.count_nonzero(m))


def masked_var(x, m):
    """Section 4: the UNBIASED variance over the valid tokens, sum m (x - mean)^2 / (N - 1), as torch.var."""
    n = np.count_nonzero(m)
    return float((np.where(m, x - masked_mean(x, m), 0.0) ** 2).sum() / (n - 1)) if n > 1 else float("nan")


# ----------------------------------------------------------------------------------------------------------
# one PPO step


def ppo_step(policy, ref_model, optimizer, rng, cfg, kl_coef, queries, responses, scores, pad_token_id):
    """TRL 0.1's PPOTrainer.step on B (query, response, score) rows -> (its stats, the next step's kl_coef).

    policy: a GPT with a value head, trained in place by optimizer (AdamW on its parameters); ref_model: the frozen
    pretrained GPT; rng: shuffles the mini-batches; cfg: the run's PPOConfig; queries, responses: lists of B 1-D int
    arrays; scores (B,).
    """
    # Section 11, the batch layout: [left padding, query, response, right padding]. Response token t sits at column
    # Q + t, and the logits that predict it (and the value head's V_t) at column Q + t - 1.
    B, Q, T = len(queries), max(len(q) for q in queries), max(len(r) for r in responses)
    input_ids = np.full((B, Q + T), pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((B, Q + T), dtype=np.int64)
    for b, (q, r) in enumerate(zip(queries, responses)):
        input_ids[b, Q - len(q):Q], input_ids[b, Q:Q + len(r)] = q, r
        attention_mask[b, Q - len(q):Q + len(r)] = 1
    m = attention_mask[:, Q:] == 1                                     # (B, T) the response tokens, right padded
    mask, labels, cols = m.astype(np.float64), input_ids[:, Q:], slice(Q - 1, Q + T - 1)
    scores = np.asarray(scores, dtype=np.float64)

    # Section 12: log pi_old, V_old and log pi_ref, once per step, without a graph, forward_batch_size rows at a time
    old_logprobs, old_values, ref_logprobs = [], [], []
    with mg.no_grad():
        for i in range(0, B, cfg.forward_batch_size):
            rows = slice(i, i + cfg.forward_batch_size)
            logits, vpred = policy.logits_and_values(input_ids[rows], attention_mask[rows])
            old_logprobs.append(logprobs_from_logits(logits.data[:, cols], labels[rows]))
            old_values.append(vpred.data[:, cols])
            ref_logits = ref_model(input_ids[rows], attention_mask[rows]).data[:, cols]
            ref_logprobs.append(logprobs_from_logits(ref_logits, labels[rows]))
    old_logprobs, old_values, ref_logprobs = (np.concatenate(a).astype(np.float64) * mask
                                              for a in (old_logprobs, old_values, ref_logprobs))

    # Section 2, per-token rewards: r_t = -beta (log pi_old - log pi_ref), plus the score on each row's last token
    if cfg.score_clip is not None:
        scores = np.clip(scores, -cfg.score_clip, cfg.score_clip)
    non_score_rewards = -kl_coef * np.where(m, old_logprobs - ref_logprobs, 0.0)
    rewards = non_score_rewards.copy()
    rewards[np.arange(B), m.sum(axis=1) - 1] += scores

    # Section 3, GAE: delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1}, both 0 after the last
    # token (the padding is zeroed, and the mask restarts A at each row's end); the returns R = A + V
    values, rewards = np.where(m, old_values, 0.0), np.where(m, rewards, 0.0)
    advantages, lastgaelam = np.zeros_like(values), np.zeros(B)
    for t in reversed(range(T)):
        nextvalues = values[:, t + 1] if t + 1 < T else 0.0
        delta = rewards[:, t] + cfg.gamma * nextvalues - values[:, t]
        lastgaelam = (delta + cfg.gamma * cfg.lam * lastgaelam) * m[:, t]
        advantages[:, t] = lastgaelam
    returns = advantages + values

    # Section 4: whiten the advantages once over every response token of the batch, unbiased variance, 1e-8 inside
    mean, var = masked_mean(advantages, m), masked_var(advantages, m)
    advantages = np.where(m, (advantages - mean) / np.sqrt(var + 1e-8), 0.0)

    # Section 13: the rollout's stats; the KL and the entropy are summed over each response, then averaged
    stats = {"objective/kl": float(((old_logprobs - ref_logprobs) * mask).sum(axis=1).mean()),
             "objective/kl_coef": float(kl_coef),
             "objective/entropy": float((-old_logprobs * mask).sum(axis=1).mean()),
             "objective/response_length": float(mask.sum(axis=1).mean()),
             "ppo/mean_non_score_reward": float(non_score_rewards.sum(axis=1).mean()),
             "ppo/mean_scores": float(scores.mean())}

    minibatch_stats = []
    for epoch in range(cfg.ppo_epochs):
        order = rng.permutation(B)                                     # a fresh shuffle each epoch
        for start in range(0, B, cfg.mini_batch_size):
            mb = order[start:start + cfg.mini_batch_size]
            mm, n = m[mb], int(np.count_nonzero(m[mb]))                # N: the mini-batch's valid tokens

            # Section 9: the forward pass with a graph, both heads on one trunk
            logits, vpred = policy.logits_and_values(input_ids[mb], attention_mask[mb])
            response_logits = logits.data[:, cols]
            logprobs = logprobs_from_logits(response_logits, labels[mb]).astype(np.float64)
            # padding may hold anything: replace it by 0 before any arithmetic
            logprobs, old, v, v_old, adv, ret = (np.where(mm, a, 0.0) for a in (
                logprobs, old_logprobs[mb], vpred.data[:, cols].astype(np.float64), old_values[mb], advantages[mb],
                returns[mb]))
            mmask = mm.astype(np.float64)

            # Section 5, the clipped surrogate: rho = exp(log pi - log pi_old), pg = mean max(-A rho, -A clip(rho))
            logratio = logprobs - old
            ratio = np.exp(logratio)
            pg_losses = -adv * ratio
            pg_losses2 = -adv * np.clip(ratio, 1.0 - cfg.cliprange, 1.0 + cfg.cliprange)
            pg_loss = float((np.maximum(pg_losses, pg_losses2) * mmask).sum() / n)

            # Section 6, the clipped value loss: V^c = max(min(V, V_old + e_v), V_old - e_v),
            # vf = 0.5 mean max((V - R)^2, (V^c - R)^2), L = pg + c_v vf
            lo, hi = v_old - cfg.cliprange_value, v_old + cfg.cliprange_value
            vpredclipped = np.maximum(np.minimum(v, hi), lo)
            vf_losses1, vf_losses2 = (v - ret) ** 2, (vpredclipped - ret) ** 2
            vf_loss = float(0.5 * (np.maximum(vf_losses1, vf_losses2) * mmask).sum() / n)
            loss = pg_loss + cfg.vf_coef * vf_loss

            # Section 7, the per-token gradients: each token takes the derivative of the branch that wins its max,
            # N dL/dlogpi = 0 where the clipped branch wins (a constant), else -A rho (d rho / d logpi = rho);
            # N dL/dV = 0 where the clipped branch wins, else c_v (V - R) w, the 0.5 cancelling the square's 2.
            # w = 1 but at exact ties of TRL's value clip, where torch's max and min split the gradient (skip on a
            # first reading: section 7, "Value term")
            dlogprobs = np.where(pg_losses2 > pg_losses, 0.0, -adv * ratio) * mmask / n
            tie = (v != vpredclipped) & (vf_losses1 == vf_losses2)
            w = np.where((v == lo) | (v == hi), 0.75, np.where(tie, 0.5, 1.0))
            dvalues = cfg.vf_coef * (np.where(vf_losses2 > vf_losses1, 0.0, v - ret) * w * mmask / n)
            if not (np.isfinite(loss) and np.isfinite(dlogprobs).all() and np.isfinite(dvalues).all()):
                raise FloatingPointError("the PPO loss or its gradient is nan or inf; the step was not applied")

            # Section 8, into the logits: dlogits_t = dlogprobs_t (onehot(y_t) - softmax(logits_t)), at the response
            # columns only; every other column gets 0
            dlp = dlogprobs.astype(response_logits.dtype)[..., None]
            dresponse = -dlp * np.exp(log_softmax(response_logits))
            y = labels[mb][..., None]
            np.put_along_axis(dresponse, y, np.take_along_axis(dresponse, y, axis=-1) + dlp, axis=-1)
            dlogits, dvpred = np.zeros_like(logits.data), np.zeros_like(vpred.data)
            dlogits[:, cols], dvpred[:, cols] = dresponse, dvalues

            # Section 9, through the GPT: one backward from both heads adds d(<logits, dlogits> + <vpred, dvpred>)
            # to every weight's .grad; then the optional global-norm clip and one AdamW step
            policy.zero_grad()
            mg.tensor.backward([logits, vpred], [dlogits, dvpred])
            if cfg.max_grad_norm is not None:
                mg.clip_grad_norm(policy.parameters(), cfg.max_grad_norm)
            optimizer.step()

            # Section 13: the mini-batch's stats, under TRL 0.1's names
            minibatch_stats.append({
                "loss/policy": pg_loss, "loss/value": vf_loss, "loss/total": pg_loss + cfg.vf_coef * vf_loss,
                "policy/approxkl": 0.5 * masked_mean(logratio ** 2, mm), "policy/policykl": masked_mean(logratio, mm),
                "policy/clipfrac": masked_mean(pg_losses2 > pg_losses, mm),
                "returns/mean": masked_mean(ret, mm), "returns/var": masked_var(ret, mm),
                "val/vpred": masked_mean(v, mm), "val/error": masked_mean(vf_losses1, mm),
                "val/clipfrac": masked_mean(vf_losses2 > vf_losses1, mm),
                "val/mean": masked_mean(v_old, mm), "val/var": masked_var(v_old, mm),
                "policy/entropy": masked_mean(entropy_from_logits(response_logits), mm)})

    # Section 13: every mini-batch weighs the same in the step's stats
    stats.update({f"ppo/{k}": float(np.mean([s[k] for s in minibatch_stats])) for k in minibatch_stats[0]})
    stats["ppo/val/var_explained"] = 1.0 - stats["ppo/val/error"] / stats["ppo/returns/var"]

    # Section 10, the adaptive KL controller: beta <- beta (1 + clip(KL / target - 1, -0.2, 0.2) n / horizon), after
    # this step's rewards used the old beta; a fixed beta (adap_kl_ctrl False, the pipeline's default) stays
    if cfg.adap_kl_ctrl:
        error = float(np.clip(stats["objective/kl"] / cfg.target - 1.0, -0.2, 0.2))
        kl_coef *= 1.0 + error * cfg.batch_size / cfg.horizon
    return stats, kl_coef


# ----------------------------------------------------------------------------------------------------------
# the loop: prompts, generation, scores, steps


def generate(policy, queries, sampling, eos, rng):
    """One response per query from the policy's full distribution (section 14: temperature 1, no top-k or top-p),
    forward_batch_size prompts at a time; a response ends with its first eos, kept, so the choice to stop is learnt."""
    responses = []
    for i in range(0, len(queries), sampling.forward_batch_size):
        chunk = queries[i:i + sampling.forward_batch_size]
        Q = max(len(q) for q in chunk)
        idx, attention_mask = np.full((len(chunk), Q), eos, dtype=np.int64), np.zeros((len(chunk), Q), dtype=np.int64)
        for b, q in enumerate(chunk):
            idx[b, Q - len(q):], attention_mask[b, Q - len(q):] = q, 1
        out = mg.generate(policy, idx, sampling.response_tokens, attention_mask=attention_mask,
                          eos_token_id=eos if sampling.stop_at_eos else None, rng=rng)[:, Q:]
        for row in out:
            responses.append(row[:np.argmax(row == eos) + 1] if sampling.stop_at_eos and np.any(row == eos) else row)
    return responses


def train(run, args, model):
    """The run's PPO stage, again: the same start, prompts, generators and settings -> the list of logged stats."""
    cfg, rlhf, sampling = run.config.ppo, run.config.rlhf, run.config.sampling
    tokenizer, eos = run.tokenizer, run.tokenizer.eos_token_id
    policy = run.policy_start() if model is None else model           # the pretrained GPT and the run's value head
    ref_model = mg.GPT(run.ref_model.cfg, dtype=policy.dtype)         # the frozen reference, in the policy's dtype
    ref_model.load_state_dict(run.ref_model.state_dict())
    policy.training = ref_model.training = False                     # no dropout: TRL 0.1's models were in eval mode
    optimizer = mg.AdamW(policy.named_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    shuffle = np.random.default_rng(cfg.seed)
    prompts = PromptStream(run.prompts[0], np.random.default_rng(rlhf.seed))   # the run's training prompts
    sampling_rng = np.random.default_rng(rlhf.seed + 1)
    kl_coef, history = float(cfg.init_kl_coef), []
    for step in range(1, (args.steps or rlhf.steps) + 1):
        queries = prompts.next_batch(cfg.batch_size)
        responses = generate(policy, queries, sampling, eos, sampling_rng)
        # the reward model reads the decoded prompt and response without eos (section 14, the reward hack)
        texts = [tokenizer.decode([int(t) for t in np.concatenate([q, r]) if t != eos])
                 for q, r in zip(queries, responses)]
        scores = run.proxy.score(texts, forward_batch_size=sampling.forward_batch_size)
        stats, kl_coef = ppo_step(policy, ref_model, optimizer, shuffle, cfg, kl_coef, queries, responses, scores, eos)
        stats.update({"env/reward_mean": float(np.mean(scores)), "env/reward_positive": float(np.mean(scores > 0)),
                      "step": step})
        history.append(stats)
        print(f"step {step}: " + ", ".join(f"{key} {stats[key]:.4g}" for key in SHOWN), flush=True)
        if args.out is not None:
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, "ppo_log.jsonl"), "w") as f:
                f.writelines(json.dumps(s) + "\n" for s in history)
    if args.out is not None:
        policy.save(os.path.join(args.out, "gpt_ppo.npz"))
    return history


def compare_with_the_run(run, history):
    """The largest relative difference between these stats and the run's ppo_log.jsonl, step by step -> a line."""
    with open(os.path.join(run.run_dir, "ppo_log.jsonl")) as f:
        recorded = {r["step"]: r for r in map(json.loads, f)}
    pairs = [(s[k], recorded[s["step"]][k], k, s["step"]) for s in history if s["step"] in recorded for k in s
             if k != "step"]
    worst = max(((abs(a - b) / abs(b) if b else abs(a - b)), k, step) for a, b, k, step in pairs)
    return (f"against {run.run_dir}/ppo_log.jsonl, steps 1-{min(len(history), len(recorded))}: largest relative "
            f"difference {worst[0]:.3g} ({worst[1]}, step {worst[2]})")


def main(argv=None, model=None):
    """The command line -> the list of logged stats. model: the policy to train, a GPT with a value head (a test's
    float64 copy); by default the run's own start. A refusal is one line on stderr and a non-zero exit status."""
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        run = open_run(args)
        with mg.kernels.using(run.config.kernels):       # the run's own kernels, so that its log is repeated exactly
            history = train(run, args, model)
        print(compare_with_the_run(run, history))
        return history
    except UsageError as e:
        print(f"rlhf_one_file.py: error: {e} (see --help)", file=sys.stderr)
        sys.exit(2)
    except (Refused, DamagedFile, FloatingPointError, OSError) as e:
        print(f"rlhf_one_file.py: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
