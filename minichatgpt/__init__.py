"""minichatgpt: the application. It wires the libraries (minigpt_np, reward, ppo_np) into one command.

    from minichatgpt import RunConfig, run_pipeline
    summary = run_pipeline(RunConfig(), "runs/default")      # what the `minichatgpt` command does

Modules, from the bottom up: `text_files`, `rotten_tomatoes` and `corpus` (the data); `run_folder` (files,
manifest, lock); `options` (the option mechanism) and `config` (every option and its default); `sampling`,
`collapse`, `evaluate` and `best_of_n` (sampling and measuring answers); `rlhf` (the loop every trainer shares);
`stages` (the main job's stages); `finished_run` (a finished run, as everything built on it opens it); `report`
and `token_view` (what a reader sees); the drivers `pipeline`, `compare` and `overopt`, which never import each
other; `entry` (how a command ends, and where it may write) and `cli` (the entry points).
"""
from .config import RunConfig
from .pipeline import run_pipeline

__all__ = ["RunConfig", "run_pipeline"]
