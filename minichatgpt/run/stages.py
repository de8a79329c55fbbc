"""The stages of the main job, one function each: tokenizer, pretraining, reward model (the n-gram model, or with
--reward-model gpt the GPT reward model), gold scorer, prompts, and the loaders of what they wrote, the RL stage's
(pipeline.rl_stage, the run's --method) among them.

Each stage reads what the earlier ones made and writes its artifacts into the run folder. `pipeline` decides,
with the run folder's manifest, which stages to run, skip or refuse; `finished_run` opens what they left.
"""
import contextlib
import dataclasses
import logging
import os
import time

import numpy as np

import minigpt_np as mg
from minigpt_np.data import build_tokenizer, encode_corpus
from minigpt_np.metrics import unigram_entropy
from minigpt_np.pretrain import pretrain
from minigpt_np.checkpoint import load_npz
from minigpt_np.resume import training_state
from reward import GPTRewardConfig, GPTRewardModel, Scorer, load_gpt_reward, load_scorer, train_gpt_reward, train_scorer
from reward.gpt_reward import FORMAT as GPT_REWARD_FORMAT
from reward.train import L2_GRID, refit_scorer

from ppo_np import METHODS

from ..loop.rlhf import make_queries
from ..settings.options import UsageError
from .run_folder import Refused, path, read_jsonl, writing

log = logging.getLogger(__name__)

# The RL stage is named after the run's method (--method, a name of ppo_np.METHODS, read whenever asked, so that a
# method added to it is a stage too), and writes gpt_<method>.npz and <method>_log.jsonl. A run folder holds one
# method's RL stage: another method is another run folder (its report is then that method's alone).
BASE_STAGES = ("tokenizer", "pretrain", "reward", "gold")


def stage_order(method="ppo"):
    """The stages of a run of `method`, each after the stages it is built on."""
    return (*BASE_STAGES, method)


STAGE_ORDER = stage_order()
BASE_ARTIFACTS = {"tokenizer": ["tokenizer.json"], "pretrain": ["gpt_pretrained.npz"], "reward": ["reward.npz"],
                  "gold": ["gold.npz"]}


def artifacts(stage):
    """What a stage writes into the run folder: a base stage's files, or an RL stage's checkpoint and log."""
    return BASE_ARTIFACTS[stage] if stage in BASE_ARTIFACTS else [f"gpt_{stage}.npz", f"{stage}_log.jsonl"]


def all_stages():
    """Every stage a run folder may hold: the base stages and every method's RL stage."""
    return (*BASE_STAGES, *METHODS)


# what a stage keeps while it trains and deletes once its artifacts are written: a restart of the stage deletes it too
TRAINING_FILES = {"reward": ["reward_gpt_train.npz"]}
BASE_DEPENDS_ON = {"tokenizer": [], "pretrain": ["tokenizer"], "reward": [], "gold": ["reward"]}


def depends_on(reward_model="ngram"):
    """The stages each stage is built on, in a run whose proxy is `reward_model`: the GPT reward model is trained
    from the pretrained GPT; an RL stage from the tokenizer, the pretrained GPT and the reward model."""
    return {**BASE_DEPENDS_ON, **({"reward": ["tokenizer", "pretrain"]} if reward_model == "gpt" else {}),
            **{method: ["tokenizer", "pretrain", "reward"] for method in METHODS}}


# The report, made last from every stage: the evaluation and what shows it. The manifest records it as the stage
# "report", with the whole config of the run, which every command that builds on the run reads from there.
REPORT = ("summary.json", "samples.md", "tokens.html", "curves.png")
# each experiment on a run: its folder is run_dir/<name>, and it writes these results beside the run's files
EXPERIMENTS = {"compare": ("compare.json", "compare.png", "compare.md"), "overopt": ("overopt.json", "overopt.png"),
               "overopt_cross": ("overopt_cross.json", "overopt_cross.png")}
# what is built on a run besides its stages and report: the experiments' folders and results, the sweep's log
BUILT_ON_RUN = (*(f for name, results in EXPERIMENTS.items() for f in (name, *results)), "sweep.jsonl")


def run_files():
    """Every name the project reads or writes in a run folder: none may be a symbolic link
    (run_folder.refuse_links)."""
    return (".lock", "manifest.json", *(a for stage in all_stages() for a in artifacts(stage)),
            *(f for files in TRAINING_FILES.values() for f in files), *REPORT, *BUILT_ON_RUN)


def train_tokenizer(config, train):
    """The byte-level BPE of --vocab-size tokens, trained on the training split in memory -> Tokenizer; UsageError if
    the split cannot fill that many (it runs out of pairs seen twice), since the model would have another size than
    asked."""
    tokenizer = build_tokenizer([s.text for s in train], config.model.vocab_size)
    if tokenizer.vocab_size < config.model.vocab_size:
        raise UsageError(f"--vocab-size {config.model.vocab_size} is more than this corpus fills: its training split "
                         f"gives {tokenizer.vocab_size} tokens (256 bytes, <|endoftext|> and every merge of a pair "
                         f"seen at least twice); use --vocab-size {tokenizer.vocab_size} or less")
    return tokenizer


def save_tokenizer(run_dir, tokenizer):
    """The tokenizer stage: write tokenizer.json -> (tokenizer, its metrics: the vocabulary it holds)."""
    with writing(path(run_dir, "tokenizer.json")):
        tokenizer.save(path(run_dir, "tokenizer.json"))
    return tokenizer, {"vocab_size": tokenizer.vocab_size}


def load_tokenizer(run_dir):
    return mg.load_tokenizer(path(run_dir, "tokenizer.json"))


PRETRAIN_METRICS = ("step", "val_loss", "tokens_per_s", "elapsed", "stop_reason")   # what the summary reports of it


def pretrain_stage(config, run_dir, tokenizer, train, val, progress=True, on_eval=None):
    """Pretrain the GPT on every training snippet (reviews and plots) -> (model, metrics: PRETRAIN_METRICS, tokens/s
    of the process that finished it); resumes if killed. on_eval: called with each evaluation's record."""
    train_ids = encode_corpus(tokenizer, [s.text for s in train])
    val_ids = encode_corpus(tokenizer, [s.text for s in val])
    # a run's tokenizer.json may hold fewer tokens than asked, if its record says so
    model = mg.GPT(dataclasses.replace(config.model, vocab_size=tokenizer.vocab_size), seed=config.seed)
    log.info("pretraining %.2f M parameters on %d tokens (unigram entropy %.2f nats/token)",
             model.num_parameters() / 1e6, len(train_ids), unigram_entropy(train_ids, tokenizer.vocab_size))
    checkpoint = path(run_dir, "gpt_pretrained.npz")
    with writing(checkpoint):
        metrics = pretrain(model, train_ids, val_ids, config.pretrain, checkpoint_path=checkpoint, progress=progress,
                           log=on_eval)
    return model, {k: metrics.get(k) for k in PRETRAIN_METRICS}


def load_pretrained(run_dir, tokenizer):
    """The finished pretraining stage -> (model, its training state), checked against the run's tokenizer."""
    file = path(run_dir, "gpt_pretrained.npz")
    model = mg.load_checkpoint(file)
    if model.cfg.vocab_size != tokenizer.vocab_size:
        raise Refused(f"{file} has a vocabulary of {model.cfg.vocab_size} tokens but the run's tokenizer.json has "
                         f"{tokenizer.vocab_size}: they come from different runs")
    return model, training_state(file)


def labelled(snippets):
    """(texts, labels) of the snippets that have a label (plots and plain text dropped)."""
    pairs = [(s.text, s.label) for s in snippets if s.label is not None]
    return [t for t, _ in pairs], np.array([y for _, y in pairs], dtype=np.int64)


def train_reward_model(train, val, test, *, features="nb", l2=None, top_k=15, log=None):
    """Fit the scorer on the labelled training snippets, choosing on validation, and measure it on every split.

    -> (scorer, metrics) with metrics = {split sizes, chosen features and l2, "train"/"val"/"test"
    {accuracy, log_loss, n}, top features, train seconds}. The test split is text the scorer never saw: the
    PPO prompts come from it. log: receives a line per fit (default: the reward package's logger).
    """
    t0 = time.perf_counter()
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = labelled(train), labelled(val), labelled(test)
    if len(val_x) == 0:
        raise ValueError("the validation split has no labelled snippets; give a corpus with more labelled rows")
    scorer = train_scorer(train_x, train_y, val_x, val_y, l2=l2, features=features, log=log)
    positive, negative = scorer.top_features(top_k)
    metrics = {
        "splits": {name: {"snippets": len(part), "labelled": len(x), "positive": int(np.sum(y == 1)),
                          "movies": len({s.movie for s in part})}
                   for name, part, x, y in (("train", train, train_x, train_y), ("val", val, val_x, val_y),
                                            ("test", test, test_x, test_y))},
        "features": scorer.info["features"], "l2": scorer.info["l2"], "n_features": len(scorer.featurizer),
        "train": scorer.metrics(train_x, train_y),
        "val": scorer.metrics(val_x, val_y),
        "test": scorer.metrics(test_x, test_y) if len(test_x) else None,
        "top_positive": positive, "top_negative": negative,
        "train_seconds": time.perf_counter() - t0,
    }
    if metrics["test"]:
        scorer.info.update(test_accuracy=metrics["test"]["accuracy"], test_log_loss=metrics["test"]["log_loss"])
    return scorer, metrics


def reward_stage(run_dir, train, val, test, progress=True):
    """Train the reward model and write reward.npz -> (scorer, its metrics on the validation and test splits)."""
    with fits_bar(progress) as tick:
        scorer, metrics = train_reward_model(train, val, test, log=tick)
    with writing(path(run_dir, "reward.npz")):
        scorer.save(path(run_dir, "reward.npz"))
    log.info("reward model: test accuracy %.3f", metrics["test"]["accuracy"])
    return scorer, {"val": metrics["val"], "test": metrics["test"]}


@contextlib.contextmanager
def fits_bar(enabled):
    """A progress bar over the reward model's fits along the L2 grid -> yields the log function its fits report to
    (None when disabled: then each fit logs its line). The search may stop before the grid's end; the bar then ends
    where it stopped."""
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm
    bar = tqdm(total=len(L2_GRID) + 1, desc="reward", unit="fit", dynamic_ncols=True)   # the fits, then the choice

    def tick(line):
        bar.set_postfix_str(line.split(": ", 1)[-1][:48], refresh=False)
        bar.update(1)
    try:
        yield tick
    finally:
        bar.total = bar.n
        bar.close()


def gpt_reward_stage(config, run_dir, tokenizer, train, val, test, progress=True):
    """--reward-model gpt: the pretrained GPT's trunk and a scalar head, trained with reward.gpt_reward_train's
    defaults (chosen on validation) on the labelled training snippets, written to reward.npz -> (model, metrics).
    Resumes after a kill from reward_gpt_train.npz, which is deleted once reward.npz is written."""
    model = train_gpt_reward_model(config, run_dir, tokenizer, labelled(train), labelled(val),
                                   path(run_dir, "reward_gpt_train.npz"), progress)
    with writing(path(run_dir, "reward.npz")):
        model.save(path(run_dir, "reward.npz"))
    os.unlink(path(run_dir, "reward_gpt_train.npz"))
    metrics = {"val": model.info["val"], "test": model.metrics(*labelled(test))}
    log.info("GPT reward model: test accuracy %.3f", metrics["test"]["accuracy"])
    return model, metrics


def train_gpt_reward_model(config, run_dir, tokenizer, train, val, checkpoint_path, progress=True):
    """A GPT reward model from the run's pretrained GPT, trained on (texts, labels) `train`, chosen on `val`."""
    cfg = GPTRewardConfig(seed=config.seed)
    model = GPTRewardModel.from_pretrained(mg.load_checkpoint(path(run_dir, "gpt_pretrained.npz")), tokenizer,
                                           seed=cfg.seed)
    return train_gpt_reward(model, *train, *val, cfg, checkpoint_path=checkpoint_path, progress=progress)[0]


def gold_stage(run_dir, train, val, test, reward_model):
    """The gold scorer: the n-gram reward model's recipe (features, l2, iterations) refitted on every labelled
    training and validation snippet; it judges and never drives training -> (scorer, its metrics on the test split).
    With a GPT proxy the recipe is chosen on validation first, as the n-gram reward model's is."""
    texts, labels = labelled(list(train) + list(val))
    recipe = reward_model if isinstance(reward_model, Scorer) else train_reward_model(train, val, test)[0]
    gold = refit_scorer(texts, labels, recipe)
    with writing(path(run_dir, "gold.npz")):
        gold.save(path(run_dir, "gold.npz"))
    metrics = gold.metrics(*labelled(test))
    log.info("gold scorer: test accuracy %.3f", metrics["accuracy"])
    return gold, {"test": metrics}


def load_scorer_of(run_dir, name):
    """<name>.npz -> its scorer: the n-gram model, or the GPT reward model (--reward-model gpt's reward.npz)."""
    file = path(run_dir, f"{name}.npz")
    return load_gpt_reward(file) if load_npz(file)[1].get("format") == GPT_REWARD_FORMAT else load_scorer(file)


def held_out_room(test):
    """How many evaluation prompts a split holds: a quarter of its labelled reviews, one prompt each (every text
    encodes to at least one token), so that three quarters are left to train on."""
    return len(labelled(test)[0]) // 4


def prompts(config, tokenizer, test):
    """Held-out labelled reviews (never seen by the reward model), shuffled, cut into prompts of 2..8 tokens
    -> (PPO training prompts, evaluation prompts): config.eval_prompts for evaluation, at most held_out_room (the
    main job refuses more; a run recorded with more used that many)."""
    rng = np.random.default_rng(config.seed)
    texts = [s.text for s in test if s.label is not None]
    texts = [texts[i] for i in rng.permutation(len(texts))]
    queries = make_queries(tokenizer, texts, config.rlhf.query_min_tokens, config.rlhf.query_max_tokens, rng)
    n_eval = min(config.eval_prompts, len(queries) // 4)
    return queries[n_eval:], queries[:n_eval]


def policy_start(run_dir, seed, value_head=True):
    """Where every policy starts: the pretrained GPT, with a value head (initialised from seed) for PPO."""
    policy = mg.load_checkpoint(path(run_dir, "gpt_pretrained.npz"))
    if value_head:
        policy.add_value_head(seed=seed)
    return policy


def load_policy(run_dir, method="ppo"):
    """The finished RL stage of `method` -> (policy, history); the log must hold every step."""
    file, log_file = (path(run_dir, name) for name in artifacts(method))
    return mg.load_checkpoint(file), read_jsonl(log_file, expect=training_state(file)["step"])
