"""minichatgpt: the application. It wires the libraries (minigpt_np, reward, ppo_np) into one command.

    from minichatgpt import RunConfig, run_pipeline
    summary = run_pipeline(RunConfig(), "runs/default")      # what the `minichatgpt` command does

Its folders are its parts, in the order a reader meets them. `loop/` is RLHF itself: prompt, sample, score and one
trainer step, for every method of ppo_np.METHODS, with the checkpoints that let a killed loop resume. `data/` reads
the corpus it learns from. `run/` is the main job and the folder it writes: its stages, the manifest that records
what each was built from, the lock, and the finished run every later command opens. `evaluation/` measures a policy
and writes what a reader sees (the table, curves, samples, tokens view, an exported model). `experiments/` holds
the studies built on a finished run (compare, overopt). `settings/` holds every option of every command, as rows
with their defaults, and `commands/` the entry points that parse them. The drivers (run/pipeline,
experiments/compare, experiments/overopt) never import each other, and the libraries never import the application
(tests/app/test_layout.py).
"""
from .run.pipeline import run_pipeline
from .settings.config import RunConfig

__all__ = ["RunConfig", "run_pipeline"]
