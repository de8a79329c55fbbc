"""The loop closed: a GPT trained here, exported with minigpt_np.export, opens in Hugging Face transformers
(pinned in the test extra) and computes what ours computes: the same logits on left-padded batches, the same
greedy tokens, the same token ids, the same values from the value head and the same reward-model scores.

No network: transformers reads only the exported folder (HF_HUB_OFFLINE is set before it is imported).
"""
import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                          GPT2ForSequenceClassification, GPT2LMHeadModel, PreTrainedTokenizerFast)

import minigpt_np as mg
from minigpt_np.data import build_tokenizer, encode_corpus
from minigpt_np.export import export_gpt, export_reward_gpt
from minigpt_np.pretrain import PretrainConfig, pretrain
from tiny_run import BAD, GOOD

LOGITS_ATOL = 1e-4    # float32 on both sides; the measured difference is printed (5e-6 at logits of 14)
TEXTS = [f"{title} is {review} ." for title in ("the heist", "summer rain", "iron coast", "night train")
         for review in GOOD + BAD]
SENTENCES = ["the heist is a warm , funny and moving film .", "Summer rain is ... a MESS!",
             "  two spaces, a tab\tand a newline\n", "unseen words: zygote quixotic 42 €, and an emoji 🎬",
             "one text<|endoftext|>and the next"]
PROMPTS = ["the heist is", "iron coast is a", "night", "summer rain is one of the"]


def left_pad(rows, pad):
    """Token lists -> idx (B, T) right-aligned with `pad` before each row, attention_mask (B, T)."""
    T = max(len(r) for r in rows)
    idx = np.full((len(rows), T), pad, dtype=np.int64)
    mask = np.zeros((len(rows), T), dtype=np.int64)
    for i, r in enumerate(rows):
        idx[i, T - len(r):], mask[i, T - len(r):] = r, 1
    return idx, mask


def positions(mask):
    """Our position ids, clip(cumsum(mask) - 1, 0); transformers' forward needs them passed for left padding."""
    return np.clip(np.cumsum(mask, axis=-1) - 1, 0, None)


def greedy_pair(model, hf, idx, mask, eos):
    """Greedy continuations of a left-padded batch to the end of the context, by ours and by transformers
    -> (ours, theirs), both (B, block_size)."""
    ours = mg.generate(model, idx, model.cfg.block_size - idx.shape[1], temperature=0, attention_mask=mask,
                       eos_token_id=eos)
    with torch.no_grad():
        theirs = hf.generate(torch.from_numpy(idx), attention_mask=torch.from_numpy(mask), do_sample=False,
                             max_new_tokens=model.cfg.block_size - idx.shape[1]).numpy()
    # transformers stops when every row has emitted eos; ours runs on and pads finished rows with eos
    return ours, np.pad(theirs, ((0, 0), (0, ours.shape[1] - theirs.shape[1])), constant_values=eos)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny GPT pretrained for 150 steps on the fixture reviews, with a value head; its tokenizer.json."""
    folder = tmp_path_factory.mktemp("run")
    tokenizer = build_tokenizer(TEXTS, vocab_size=300, path=folder / "tokenizer.json")
    ids = encode_corpus(tokenizer, TEXTS)
    cfg = mg.GPTConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32)
    model = mg.GPT(cfg, seed=0)
    pretrain(model, ids, ids, PretrainConfig(max_steps=150, batch_size=16, lr=1e-2, warmup_steps=10,
                                             eval_interval=150, seed=0), progress=False)
    model.add_value_head(seed=1)
    model.params["v_head.bias"].data[:] = 0.25       # a bias of 0 would not show a lost bias
    model.training = False
    return model, tokenizer, folder / "tokenizer.json"


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    model, _, tokenizer_file = trained
    return export_gpt(model, tokenizer_file, tmp_path_factory.mktemp("export") / "policy")


def test_the_folder_is_a_gpt2_that_loads_without_missing_or_unexpected_keys(trained, exported, tmp_path):
    model, tokenizer, tokenizer_file = trained
    assert sorted(os.listdir(exported)) == ["README.md", "config.json", "generation_config.json", "model.safetensors",
                                            "tokenizer.json", "tokenizer_config.json", "value_head.safetensors"]
    assert sorted(load_file(os.path.join(exported, "model.safetensors"))) == sorted(
        k for k in model.state_dict() if not k.startswith("v_head."))
    assert (Path(exported) / "tokenizer.json").read_bytes() == tokenizer_file.read_bytes()
    hf, info = GPT2LMHeadModel.from_pretrained(exported, output_loading_info=True)
    assert all(not keys for keys in info.values()), f"loading reported {info}"
    config = AutoConfig.from_pretrained(exported)
    assert (config.n_layer, config.n_head, config.n_embd, config.n_positions, config.vocab_size) == (
        model.cfg.n_layer, model.cfg.n_head, model.cfg.n_embd, model.cfg.block_size, model.cfg.vocab_size)
    assert config.eos_token_id == config.bos_token_id == tokenizer.eos_token_id
    assert hf.lm_head.weight is hf.transformer.wte.weight, "lm_head is not tied to wte"
    assert hf.dtype == torch.float32
    assert isinstance(AutoModelForCausalLM.from_pretrained(exported), GPT2LMHeadModel)
    # transformers' own save_pretrained writes the same arrays and, but for its version and the summary_* fields
    # of GPT2DoubleHeadsModel, the same config: nothing it would write is missing from ours
    hf.save_pretrained(tmp_path)
    ours, theirs = load_file(os.path.join(exported, "model.safetensors")), load_file(tmp_path / "model.safetensors")
    assert sorted(ours) == sorted(theirs) and all(np.array_equal(ours[k], theirs[k]) for k in ours)
    ours, theirs = (json.loads((Path(folder) / "config.json").read_text()) for folder in (exported, tmp_path))
    differ = {k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k)}
    assert differ == {"transformers_version", "summary_type", "summary_use_proj", "summary_proj_to_labels",
                      "summary_first_dropout"}, f"config.json differs from save_pretrained's in {sorted(differ)}"
    print(f"transformers {transformers.__version__}, attention implementation {hf.config._attn_implementation}")


def test_transformers_logits_equal_ours_on_a_left_padded_batch(trained, exported):
    model, tokenizer, _ = trained
    hf = GPT2LMHeadModel.from_pretrained(exported).eval()
    idx, mask = left_pad([tokenizer.encode(s) for s in SENTENCES[:4]], tokenizer.eos_token_id)
    ours = model(idx, attention_mask=mask).data                                          # (B, T, V)
    with torch.no_grad():
        theirs = hf(torch.from_numpy(idx), attention_mask=torch.from_numpy(mask),
                    position_ids=torch.from_numpy(positions(mask))).logits.numpy()
        unpositioned = hf(torch.from_numpy(idx), attention_mask=torch.from_numpy(mask)).logits.numpy()
    real = mask.astype(bool)           # padding positions are read by nothing; compare the tokens
    worst = float(np.abs(ours - theirs)[real].max())
    print(f"max |logits ours - transformers| over {real.sum()} tokens: {worst:.2e} (scale {np.abs(ours).max():.1f})")
    assert worst < LOGITS_ATOL, f"logits differ by {worst:.2e}"
    # padding positions attend to nothing; there transformers' default attention (sdpa) differs from ours, and its
    # eager attention, which adds the dtype's minimum to masked scores (5.24.0 masking_utils.py:615-617) where we
    # set them to it, agrees
    eager = GPT2LMHeadModel.from_pretrained(exported, attn_implementation="eager").eval()
    with torch.no_grad():
        everywhere = eager(torch.from_numpy(idx), attention_mask=torch.from_numpy(mask),
                           position_ids=torch.from_numpy(positions(mask))).logits.numpy()
    worst_eager = float(np.abs(ours - everywhere).max())
    print(f"eager attention, every position including padding: {worst_eager:.2e}")
    assert worst_eager < LOGITS_ATOL
    # without position_ids a forward call numbers positions 0..T-1 through the padding: a left-padded row changes
    shifted = float(np.abs(ours - unpositioned)[real].max())
    assert shifted > 100 * LOGITS_ATOL, f"transformers' forward now derives positions from the mask ({shifted:.2e})"


def test_greedy_generation_gives_the_same_tokens(trained, exported):
    model, tokenizer, _ = trained
    hf = AutoModelForCausalLM.from_pretrained(exported).eval()
    eos = tokenizer.eos_token_id
    idx, mask = left_pad([tokenizer.encode(p) for p in PROMPTS], eos)
    ours, theirs = greedy_pair(model, hf, idx, mask, eos)
    for prompt, a, b in zip(PROMPTS, ours, theirs):
        print(f"{prompt!r} -> {tokenizer.decode(a[idx.shape[1]:].tolist())!r}")
    np.testing.assert_array_equal(theirs, ours)
    new = ours[:, idx.shape[1]:]
    assert (new != eos).sum(axis=1).min() >= 3, "too few tokens generated for the comparison to mean much"
    # the pipeline a learner tries first
    texts = [out[0]["generated_text"] for out in
             transformers.pipeline("text-generation", model=exported)(PROMPTS, do_sample=False, batch_size=4)]
    assert texts == [p + tokenizer.decode(row.tolist()).split(mg.EOS)[0] for p, row in zip(PROMPTS, new)]


def test_the_pipeline_stops_at_the_last_position_the_model_has(trained, tmp_path):
    """An untrained GPT rarely says eos; without generation_config.json's max_length the pipeline's own default
    (256 new tokens) would run past the position table."""
    _, tokenizer, tokenizer_file = trained
    model = mg.GPT(mg.GPTConfig(vocab_size=tokenizer.vocab_size, block_size=24, n_layer=1, n_head=2, n_embd=16))
    out = export_gpt(model, tokenizer_file, tmp_path / "untrained")
    generator = transformers.pipeline("text-generation", model=out)
    ids = generator(PROMPTS[0], do_sample=False, return_tensors=True)[0]["generated_token_ids"]
    assert len(ids) == 24 and tokenizer.eos_token_id not in ids


def test_tokenizer_encodes_and_decodes_as_ours(trained, exported):
    _, tokenizer, _ = trained
    for hf_tok in (PreTrainedTokenizerFast.from_pretrained(exported), AutoTokenizer.from_pretrained(exported)):
        assert hf_tok.eos_token_id == hf_tok.pad_token_id == hf_tok.bos_token_id == tokenizer.eos_token_id
        for text in SENTENCES:
            ids = hf_tok(text)["input_ids"]
            assert ids == tokenizer.encode(text), f"{type(hf_tok).__name__} encodes {text!r} differently"
            assert hf_tok.decode(ids) == tokenizer.decode(ids) == text
        batch = hf_tok(PROMPTS, padding=True, return_tensors="np")
        idx, mask = left_pad([tokenizer.encode(p) for p in PROMPTS], tokenizer.eos_token_id)
        np.testing.assert_array_equal(batch["input_ids"], idx)
        np.testing.assert_array_equal(batch["attention_mask"], mask)


def test_value_head_round_trips(trained, exported):
    model, tokenizer, _ = trained
    v_head = load_file(os.path.join(exported, "value_head.safetensors"))
    assert {k: v.shape for k, v in v_head.items()} == {"v_head.weight": (1, model.cfg.n_embd), "v_head.bias": (1,)}
    head = torch.nn.Linear(model.cfg.n_embd, 1)          # torch's (out, in) layout loads as it is
    head.load_state_dict({k.removeprefix("v_head."): torch.from_numpy(v) for k, v in v_head.items()})
    hf = GPT2LMHeadModel.from_pretrained(exported).eval()
    idx, mask = left_pad([tokenizer.encode(s) for s in SENTENCES[:3]], tokenizer.eos_token_id)
    _, values = model.logits_and_values(idx, attention_mask=mask)
    with torch.no_grad():
        h = hf.transformer(torch.from_numpy(idx), attention_mask=torch.from_numpy(mask),
                           position_ids=torch.from_numpy(positions(mask))).last_hidden_state
        theirs = head(h).squeeze(-1).numpy()
    worst = float(np.abs(values.data - theirs)[mask.astype(bool)].max())
    print(f"max |values ours - transformers trunk + v_head| = {worst:.2e}")
    assert worst < LOGITS_ATOL


def test_a_reward_gpt_exports_as_a_sequence_classifier(trained, tmp_path):
    model, tokenizer, tokenizer_file = trained
    state_dict = {k: v for k, v in model.state_dict().items() if not k.startswith("v_head.")}
    state_dict["score.weight"] = np.random.default_rng(0).standard_normal((1, model.cfg.n_embd)).astype(np.float32)
    out = export_reward_gpt(state_dict, model.cfg, tokenizer_file, tmp_path / "reward")
    assert "generation_config.json" not in os.listdir(out)
    hf, info = AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert isinstance(hf, GPT2ForSequenceClassification) and hf.config.num_labels == 1
    assert all(not keys for keys in info.values()), f"loading reported {info}"
    idx, mask = left_pad([tokenizer.encode(s) for s in SENTENCES[:4]], tokenizer.eos_token_id)
    h = model.hidden_states(idx, attention_mask=mask).data[:, -1]                       # left padded: last = real
    ours = h @ state_dict["score.weight"][0]
    with torch.no_grad():
        theirs = hf(torch.from_numpy(idx), attention_mask=torch.from_numpy(mask),
                    position_ids=torch.from_numpy(positions(mask))).logits.numpy()[:, 0]
    worst = float(np.abs(ours - theirs).max())
    print(f"max |reward ours - GPT2ForSequenceClassification| = {worst:.2e}")
    assert worst < LOGITS_ATOL
    with pytest.raises(ValueError, match=r"missing \['score.weight'\]"):
        export_reward_gpt({k: v for k, v in state_dict.items() if k != "score.weight"}, model.cfg, tokenizer_file,
                          tmp_path / "no_score")
    assert not (tmp_path / "no_score").exists()


def test_export_refuses_a_non_empty_folder_and_fills_an_empty_one(trained, tmp_path):
    model, _, tokenizer_file = trained
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="exists and is not an empty folder"):
        export_gpt(model, tokenizer_file, full)
    assert os.listdir(full) == ["notes.txt"] and (full / "notes.txt").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["full"], "a refused export left files behind"
    empty = tmp_path / "empty"
    empty.mkdir()
    export_gpt(model, tokenizer_file, empty, card="# my card\n", generation={"top_k": 50})
    assert (empty / "README.md").read_text().endswith("\n# my card\n")
    assert json.loads((empty / "generation_config.json").read_text())["top_k"] == 50


def test_export_refuses_a_tokenizer_larger_than_the_model(trained, tmp_path):
    model, _, tokenizer_file = trained
    small = mg.GPT(mg.GPTConfig(vocab_size=model.cfg.vocab_size - 1, block_size=8, n_layer=1, n_head=1, n_embd=8))
    with pytest.raises(ValueError, match="the tokenizer has .* tokens but the model only"):
        export_gpt(small, tokenizer_file, tmp_path / "out")
    assert not (tmp_path / "out").exists()
