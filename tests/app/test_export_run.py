"""minichatgpt-export on a tiny finished run, through its command line: the folder opens in transformers (pinned in
the test extra) and computes what the run's own models compute: the same logits, the same greedy tokens, the same
token ids; and every refusal is one line, before anything is written.
"""
import json
import os
import shutil

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

import minigpt_np as mg
from minichatgpt.commands import cli
from minichatgpt.run.finished_run import FinishedRun
from minichatgpt.evaluation.report import format_table
from minichatgpt.run.run_folder import Manifest, read_json
from reward import GPTRewardModel
from test_export import greedy_pair, left_pad, positions
from tiny_run import BAD, GOOD, assert_one_line_refusal, run_cli, snapshot

LOGITS_ATOL = 1e-4      # float32 on both sides, as tests/engine/test_export.py
PROMPTS = ["the heist is", "iron coast is a", "night", "summer rain is one of the"]
SENTENCES = [f"the heist is {review} ." for review in GOOD[:2] + BAD[:2]] + ["unseen words: zygote 42 €"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, built_runs):
    return built_runs.copy(tmp_path_factory.mktemp("tiny"), "run")


def export(capsys, run_dir, out, *flags):
    return run_cli(capsys, ["--runs-dir", str(run_dir.parent), "--name", run_dir.name, *flags, str(out)],
                   cli.export_main)


def test_the_exported_policy_computes_what_the_runs_policy_computes(run_dir, tmp_path, capsys):
    status, err = export(capsys, run_dir, tmp_path / "policy")
    assert status == 0, err
    out = tmp_path / "policy"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
            "value_head.safetensors", "README.md"} == set(os.listdir(out))
    ours, tokenizer = mg.load_checkpoint(run_dir / "gpt_ppo.npz"), mg.load_tokenizer(run_dir / "tokenizer.json")
    ours.training = False
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not np.array_equal(hf.transformer.wte.weight.detach().numpy(),
                              mg.load_checkpoint(run_dir / "gpt_pretrained.npz").state_dict()["transformer.wte.weight"])
    eos = tokenizer.eos_token_id
    idx, mask = left_pad([[eos] + tokenizer.encode(p) for p in PROMPTS], eos)
    with torch.no_grad():
        theirs = hf(torch.from_numpy(idx), attention_mask=torch.from_numpy(mask),
                    position_ids=torch.from_numpy(positions(mask))).logits.numpy()
    worst = float(np.abs(ours(idx, attention_mask=mask).data - theirs)[mask.astype(bool)].max())
    print(f"max |logits ours - transformers| = {worst:.2e}")
    assert worst < LOGITS_ATOL
    greedy, hf_greedy = greedy_pair(ours, hf, idx, mask, eos)
    np.testing.assert_array_equal(hf_greedy, greedy)
    assert (greedy[:, idx.shape[1]:] != eos).sum() >= 8, "too few tokens generated for the comparison to mean much"
    hf_tokenizer = AutoTokenizer.from_pretrained(out)
    for text in SENTENCES:
        assert hf_tokenizer(text)["input_ids"] == tokenizer.encode(text), text


def test_the_model_card_says_what_the_run_was(run_dir, tmp_path, capsys):
    assert export(capsys, run_dir, tmp_path / "policy")[0] == 0
    card = (tmp_path / "policy" / "README.md").read_text()
    summary, config = read_json(run_dir / "summary.json"), FinishedRun.open(str(run_dir)).config
    assert format_table({"reference": summary["reference"], "policy": summary["policy"]}) in card
    for fact in ("corpus: reviews.csv", f"seed: {config.seed}", f"PPO, {summary['ppo_steps']} steps",
                 "AutoModelForCausalLM.from_pretrained", "value_head.safetensors"):
        assert fact in card, fact


def test_the_reference_is_the_pretrained_model_without_a_value_head(run_dir, tmp_path, capsys):
    assert export(capsys, run_dir, tmp_path / "ref", "--model", "reference")[0] == 0
    assert "value_head.safetensors" not in os.listdir(tmp_path / "ref")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "ref")
    pretrained = mg.load_checkpoint(run_dir / "gpt_pretrained.npz").state_dict()
    np.testing.assert_array_equal(hf.transformer.h[0].attn.c_attn.weight.detach().numpy(),
                                  pretrained["transformer.h.0.attn.c_attn.weight"])


def test_a_gpt_proxy_exports_as_a_sequence_classifier(run_dir, tmp_path, capsys):
    """A run whose manifest records a GPT reward model (reward*.npz) exports it; its scores are transformers'."""
    copy = tmp_path / "runs" / "gptproxy"
    shutil.copytree(run_dir, copy)
    tokenizer = mg.load_tokenizer(copy / "tokenizer.json")
    proxy = GPTRewardModel.from_pretrained(mg.load_checkpoint(copy / "gpt_pretrained.npz"), tokenizer, seed=3)
    proxy.save(copy / "reward_gpt.npz")
    manifest = Manifest(str(copy))
    manifest.record("reward", ["reward_gpt.npz"])
    assert export(capsys, copy, tmp_path / "rm", "--model", "reward")[0] == 0
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "rm")
    # right padding, as our score() pads: a plain forward numbers positions 0..T-1 whatever the mask says
    hf_tokenizer.padding_side = "right"
    batch = hf_tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = hf(**batch).logits[:, 0].numpy()
    proxy.training = False
    worst = float(np.abs(proxy.score(SENTENCES) - theirs).max())
    print(f"max |reward ours - transformers| = {worst:.2e}")
    assert worst < LOGITS_ATOL


def test_refusals_are_one_line_and_write_nothing(run_dir, tmp_path, capsys):
    before = snapshot(run_dir)
    status, err = export(capsys, run_dir, tmp_path / "x", "--model", "critic")
    assert_one_line_refusal(status, err, 2, "--model")
    status, err = export(capsys, run_dir, tmp_path / "x", "--model", "reward")
    assert_one_line_refusal(status, err, 1, "n-gram", "no Hugging Face form")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    status, err = export(capsys, run_dir, full)
    assert_one_line_refusal(status, err, 2, "OUT_DIR", "not an empty folder")
    assert os.listdir(full) == ["keep.txt"]
    status, err = export(capsys, run_dir, full / "keep.txt")
    assert_one_line_refusal(status, err, 2, "OUT_DIR", "is a file")
    unfinished = tmp_path / "runs" / "unfinished"
    shutil.copytree(run_dir, unfinished)
    manifest = json.loads((unfinished / "manifest.json").read_text())
    manifest["stages"]["ppo"]["finished"] = False
    (unfinished / "manifest.json").write_text(json.dumps(manifest))
    status, err = export(capsys, unfinished, tmp_path / "x")
    assert_one_line_refusal(status, err, 1, "is not a finished run", "ppo stage is not finished")
    (run_dir / ".." / "nothing").resolve().mkdir()
    assert_one_line_refusal(*export(capsys, run_dir.parent / "nothing", tmp_path / "x"), 1, "is not a finished run")
    assert not (tmp_path / "x").exists()
    assert snapshot(run_dir) == before
