"""minichatgpt: the application. It wires the libraries (minigpt_np, reward, ppo_np) into one command.

    from minichatgpt import RunConfig, run_pipeline
    summary = run_pipeline(RunConfig(), "runs/default")      # what the `minichatgpt` command does

Modules: `config` (every option and its default), `cli` (the entry points), `corpus`, `text_files` and
`rotten_tomatoes` (the data), `stages` and `pipeline` (the main job), `rlhf` (the PPO loop), `evaluate`,
`report` and `run_folder`.
"""
from .config import RunConfig
from .pipeline import run_pipeline

__all__ = ["RunConfig", "run_pipeline"]
