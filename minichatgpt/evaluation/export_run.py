"""minichatgpt-export: one model of a finished run as a Hugging Face model folder, with a model card that says
what the run was, so that a learner can take it on to `transformers` and TRL (docs/graduate.md).

    policy     the trained policy (gpt_<method>.npz), and PPO's value head beside it as value_head.safetensors
    reference  the pretrained GPT every policy started from (gpt_pretrained.npz)
    reward     the run's GPT reward model, if its proxy is one; the n-gram proxy has no Hugging Face form

The run is opened through FinishedRun, so a run that is not finished, or whose files changed, is refused before
anything is written; minigpt_np.export writes the folder under a temporary name and renames it into place. The
model card describes the model as loaded (its shape, the steps its checkpoint holds), not what the manifest says.

generation_config.json asks for the run's response length in new tokens (max_new_tokens; as the policy was trained
to answer), and sets no max_length: transformers 5.24.0 warns on every generate(max_new_tokens=...) when the
generation config holds a max_length (generation/utils.py:2033-2039, has_default_max_length at :2785-2789). A
prompt of the run's (at most query_max_tokens) plus that answer fits the position table (the main job's rule); so
does pipeline("text-generation"), which adds its own 256 new tokens only where the generation config is silent
(pipelines/base.py:1070-1075).
"""
import os

import minigpt_np as mg
from minigpt_np.resume import training_state
from minigpt_np.export import export_gpt, export_reward_gpt
from ppo_np import METHODS
from reward import load_gpt_reward

from ..run.finished_run import FinishedRun
from ..run.run_folder import Refused, path, read_json
from .report import format_table

MODELS = ("policy", "reference", "reward")


def export_run(run_dir, model, out_dir, cache_dir=None):
    """Write `model` ("policy", "reference" or "reward") of the finished run in run_dir as a Hugging Face folder
    -> out_dir. Refused for an unfinished or changed run, and for "reward" when the run's proxy is the n-gram
    model."""
    run = FinishedRun.open(run_dir, cache_dir)
    tokenizer_file = path(run_dir, "tokenizer.json")
    if model == "reward":
        reward_gpt = proxy_gpt(run)
        if reward_gpt is None:
            raise Refused(f"{run_dir}'s proxy is the n-gram model (reward.npz), which has no Hugging Face form; "
                          "export --model policy or reference, or build a run with a GPT reward model")
        return same_mode(export_reward_gpt(reward_gpt.state_dict(), reward_gpt.gpt.cfg, tokenizer_file, out_dir,
                                           card=model_card(run, model, "GPT2ForSequenceClassification",
                                                           reward_gpt.gpt.cfg)))
    if model == "policy":
        method, file = run.trained_policy()
        gpt = mg.load_checkpoint(file)
    else:
        method, gpt = None, run.pretrained()
    generation = {"max_length": None, "max_new_tokens": run.config.sampling.response_tokens}
    return same_mode(export_gpt(gpt, tokenizer_file, out_dir, generation=generation,
                                card=model_card(run, model, "GPT2LMHeadModel", gpt.cfg, method, gpt.cfg.value_head)))


def same_mode(out_dir):
    """Give every file of the exported folder the mode the JSON files got from the umask (safetensors writes its
    files readable by their owner alone) -> out_dir."""
    mode = os.stat(os.path.join(out_dir, "config.json")).st_mode & 0o777
    for name in os.listdir(out_dir):
        os.chmod(os.path.join(out_dir, name), mode)
    return out_dir


def proxy_gpt(run):
    """The run's GPT reward model -> GPTRewardModel, or None when its proxy is the n-gram model: the first file
    the manifest recorded as reward*.npz that is a GPT reward model (checked when the run was opened)."""
    for record in run.manifest.stages.values():
        for name in record.get("outputs", {}):
            if name.startswith("reward") and name.endswith(".npz"):
                try:
                    return load_gpt_reward(path(run.run_dir, name))
                except ValueError:       # an n-gram scorer: another format
                    continue
    return None


def model_card(run, model, architecture, cfg, method=None, value_head=False):
    """README.md's body: which run and model this is (cfg: the GPTConfig of the model as loaded), the run's
    before/after table, and how to load it."""
    c, summary = run.config, read_json(path(run.run_dir, "summary.json"))
    pretrained = training_state(path(run.run_dir, "gpt_pretrained.npz"))
    corpus = c.corpus if c.corpus == "rotten_tomatoes" else os.path.basename(c.corpus)
    label = METHODS[method or run.config.method].label
    what = {"policy": f"the policy trained with {label}",
            "reference": "the pretrained model every policy starts from (the reference)",
            "reward": "the GPT reward model the policy was trained against (the proxy)"}[model]
    lines = [f"# minichatgpt run `{os.path.basename(os.path.normpath(run.run_dir))}`: {model}", "",
             f"{architecture}: {what}. Trained in NumPy by minichatgpt, exported with `minichatgpt-export "
             f"--model {model}`.", "",
             f"- corpus: {corpus} (sha256 of its snippets {summary['data']['corpus_sha256'][:16]}...)",
             f"- seed: {c.seed}",
             f"- pretraining: {pretrained['step']} steps ({pretrained['stop_reason']}), {cfg.n_layer} layers, "
             f"{cfg.n_head} heads, {cfg.n_embd} channels, {cfg.block_size} positions, {cfg.vocab_size} tokens",
             f"- RL: {label}, {summary['ppo_steps']} steps of "
             f"{c.ppo.batch_size} responses of at most {c.sampling.response_tokens} tokens", "",
             "## Before and after RL, on the run's held-out prompts", "",
             format_table({"reference": summary["reference"], "policy": summary["policy"]}), "",
             "## Load it", "", "```python", *LOAD[architecture]]
    if value_head:
        lines += VALUE_HEAD
    return "\n".join(lines + ["```", ""])


LOAD = {
    "GPT2LMHeadModel": [
        "from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline",
        'model = AutoModelForCausalLM.from_pretrained("<this folder>")',
        'tokenizer = AutoTokenizer.from_pretrained("<this folder>")',
        'print(pipeline("text-generation", model=model, tokenizer=tokenizer)("the movie is", do_sample=False))'],
    "GPT2ForSequenceClassification": [
        "import torch",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        'model = AutoModelForSequenceClassification.from_pretrained("<this folder>")',
        'tokenizer = AutoTokenizer.from_pretrained("<this folder>")',
        "with torch.no_grad():",
        '    print(model(**tokenizer(["a warm and funny film"], return_tensors="pt")).logits[:, 0])'],
}
VALUE_HEAD = [
    "# PPO's value head, v_head.weight (1, C) and v_head.bias (1,): a torch.nn.Linear on the last hidden states",
    "import torch",
    "from safetensors.torch import load_file",
    "v_head = torch.nn.Linear(model.config.n_embd, 1)",
    'v_head.load_state_dict({k.removeprefix("v_head."): v for k, v in load_file("<this folder>/value_head.safetensors")'
    ".items()})"]
