"""Write a GPT as a Hugging Face model folder, which `transformers` opens with `from_pretrained`.

The GPT already has GPT2LMHeadModel's parameter names and layouts (model.py), so exporting writes files and
converts nothing:

    config.json               the GPT2Config fields our GPTConfig implies, and the architecture
    model.safetensors         the transformer.* arrays as they are (safetensors' NumPy API: no torch needed)
    tokenizer.json            our byte-level BPE, copied byte for byte
    tokenizer_config.json     PreTrainedTokenizerFast; <|endoftext|> is bos, eos, unk and pad
    generation_config.json    language model only: sample as the policy was trained to sample
    value_head.safetensors    PPO policy only: the value head, which GPT2LMHeadModel has no place for
    README.md                 the model card

`export_gpt` writes a policy or reference model (GPT2LMHeadModel), `export_reward_gpt` a GPT reward model
(GPT2ForSequenceClassification); both take a state dict in Hugging Face names.

Checked against the source of transformers==5.24.0, which the `test` extra pins (what `pip install transformers`
installed when this was written: 5.25.0 needs kernels>=0.19.1, which the index did not offer); file:line below
are in that wheel. transformers' own save_pretrained, run on the loaded model, writes the same arrays and the
same config.json apart from transformers_version and GPT2DoubleHeadsModel's summary_* fields (tested):
- Conv1D stores its weight (in, out) and computes x W + b (pytorch_utils.py:110, 119), as our c_attn, c_proj
  and c_fc do: those arrays go in untransposed.
- lm_head.weight is tied to transformer.wte.weight (modeling_gpt2.py:637) when tie_word_embeddings is true:
  from_pretrained sets lm_head.weight to the wte parameter itself (modeling_utils.py:2539, 2615-2624), so the
  file holds wte once, as save_pretrained writes it (modeling_utils.py:436, 3533-3534).
- There are no attn.bias / attn.masked_bias buffers to write: 5.x builds the causal mask on each call
  (modeling_gpt2.py:583) and ignores those keys in older checkpoints (modeling_gpt2.py:430).
- "gelu_new" is 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (activations.py:66, 328), our ops.gelu_forward;
  layer_norm_epsilon feeds every nn.LayerNorm (modeling_gpt2.py:254, 256, 496); the attention scale is
  head_dim^-0.5 with scale_attn_weights and without scale_attn_by_inverse_layer_idx (modeling_gpt2.py:97-101).
- Position ids: `generate` computes cumsum(mask) - 1, padding set to 0 (generation/utils.py:919-921), as our
  model does; a plain forward call does NOT look at the mask and uses arange(T) (modeling_gpt2.py:571-574), so
  a left-padded batch needs position_ids passed explicitly to give our logits.
- from_pretrained defaults to dtype="auto" (modeling_utils.py:4186-4187), which reads config.json's "dtype"
  (modeling_utils.py:829-832): we write the arrays' dtype there. ("torch_dtype" is the 4.x spelling,
  still accepted: configuration_utils.py:440.)
"""
import functools
import json
import os
import shutil

import numpy as np

from .model import parameter_shapes
from .ops import LN_EPS
from .tokenizer import EOS, load_tokenizer

VALUE_HEAD = ("v_head.weight", "v_head.bias")


def gpt2_config(cfg, eos_token_id, dtype, architecture="GPT2LMHeadModel"):
    """config.json for GPT2Config (configuration_gpt2.py:77-102), every field written out rather than left to
    transformers' defaults. cfg: a GPTConfig."""
    config = {
        "architectures": [architecture],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,      # rows of wpe: the longest sequence (max_position_embeddings)
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": 4 * cfg.n_embd,          # the MLP width, c_fc (C, 4C)
        "activation_function": "gelu_new",  # the tanh approximation (activations.py:66)
        "layer_norm_epsilon": LN_EPS,
        "resid_pdrop": cfg.dropout,         # our dropout sits where GPT-2's resid and embd dropouts do
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": 0.0,                  # we never drop attention probabilities
        "initializer_range": 0.02,          # model.init_parameter's std (only matters for new weights)
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": eos_token_id,       # <|endoftext|> is GPT-2's only special token, and ours
        "eos_token_id": eos_token_id,
        "pad_token_id": eos_token_id,
        "dtype": dtype,
    }
    if architecture == "GPT2ForSequenceClassification":
        # one label: num_labels is len(id2label) (configuration_utils.py:560-573)
        config.update(id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    return config


def export_gpt(model, tokenizer_file, out_dir, *, card=None, generation=None):
    """Write `model` (a GPT: policy or reference) and its tokenizer as a GPT2LMHeadModel folder -> out_dir.

    A value head is written beside the model as value_head.safetensors in torch.nn.Linear's layout:
    v_head.weight (1, C) (ours is (C, 1), transposed here) and v_head.bias (1,), the shape of a sequence
    classifier's `score` layer (modeling_gpt2.py:865), so the model folder stays a plain GPT-2.
    generation: entries that replace generation_config.json's defaults (`generation_defaults`).
    """
    state_dict = model.state_dict()
    value_head = {name: state_dict.pop(name) for name in VALUE_HEAD if name in state_dict}
    if value_head:
        value_head["v_head.weight"] = value_head["v_head.weight"].T      # (C, 1) -> (1, C)
    return _write_folder(state_dict, model.cfg, tokenizer_file, out_dir, "GPT2LMHeadModel", card, generation,
                         value_head)


def export_reward_gpt(state_dict, cfg, tokenizer_file, out_dir, *, card=None):
    """Write a GPT reward model as a GPT2ForSequenceClassification folder -> out_dir.

    state_dict: transformer.* in Hugging Face names plus score.weight (1, C) (a bias-free nn.Linear,
    modeling_gpt2.py:865); cfg: its GPTConfig. pad_token_id is <|endoftext|>, and transformers scores each
    sequence at its last token that is not pad_token_id (modeling_gpt2.py:921-925): a text that ends in
    <|endoftext|> is scored at the token before it.
    """
    return _write_folder(state_dict, cfg, tokenizer_file, out_dir, "GPT2ForSequenceClassification", card)


def generation_defaults(cfg, eos_token_id):
    """generation_config.json: sample at temperature 1 from the whole distribution, as the policy was trained.

    transformers' own defaults are greedy, max_length 20 and, once sampling, top_k 50
    (generation/configuration_utils.py:611-618); top_k 0 turns the top-k cut off (generation/utils.py:1622).
    max_length = block_size keeps pipeline("text-generation") inside the position table: its own defaults
    (max_new_tokens 256, temperature 0.7: pipelines/text_generation.py:93-97) apply only where the model's
    generation config is silent (pipelines/base.py:1071-1075).
    """
    return {"bos_token_id": eos_token_id, "eos_token_id": eos_token_id, "pad_token_id": eos_token_id,
            "do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "max_length": cfg.block_size}


def _write_folder(state_dict, cfg, tokenizer_file, out_dir, architecture, card, generation=None, value_head=None):
    """Check everything, write the folder under a temporary name beside out_dir, then rename it into place."""
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise ValueError(f"{out_dir} exists and is not an empty folder; export into a new folder, or delete it first")
    save_file = _safetensors_writer()
    tokenizer = load_tokenizer(tokenizer_file)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {cfg.vocab_size}; "
                         "export the tokenizer.json the model was trained with")
    weights = _checked_weights(state_dict, cfg, architecture)
    dtype = next(iter(weights.values())).dtype.name
    eos = tokenizer.eos_token_id
    files = {
        "config.json": gpt2_config(cfg, eos, dtype, architecture),
        "tokenizer_config.json": tokenizer_config(cfg),
        "README.md": _model_card(card, cfg, architecture, weights),
    }
    if architecture == "GPT2LMHeadModel":
        files["generation_config.json"] = {**generation_defaults(cfg, eos), **(generation or {})}
    tmp = f"{out_dir.rstrip(os.sep)}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        save_file(weights, os.path.join(tmp, "model.safetensors"))
        if value_head:
            save_file(value_head, os.path.join(tmp, "value_head.safetensors"))
        shutil.copyfile(_tokenizer_path(tokenizer_file), os.path.join(tmp, "tokenizer.json"))
        for name, content in files.items():
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                f.write(content if name.endswith(".md") else json.dumps(content, indent=2) + "\n")
        os.replace(tmp, out_dir)         # an empty out_dir is replaced; a crash leaves no half-written folder
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def tokenizer_config(cfg):
    """tokenizer_config.json: how transformers loads our tokenizer.json."""
    return {
        # loads tokenizer.json whole; a model's own class (GPT2Tokenizer) rebuilds the tokenizer from the
        # vocabulary and merges around its own pipeline (tokenization_utils_tokenizers.py:114-124,
        # models/gpt2/tokenization_gpt2.py:109-120). 5.x's name for it is TokenizersBackend (:1588); the
        # old name also loads in 4.x
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS,
        "padding_side": "left",                         # prompts are left-padded, as generate expects
        "add_prefix_space": False,                      # as train_tokenizer's ByteLevel pre-tokenizer
        "clean_up_tokenization_spaces": False,          # keep " ." and " ," as the corpus writes them
        "model_max_length": cfg.block_size,
    }


def _checked_weights(state_dict, cfg, architecture):
    """The arrays to write, named and shaped as the architecture expects; ValueError naming every mismatch."""
    expected = {k: v for k, v in parameter_shapes(cfg).items() if k not in VALUE_HEAD}
    if architecture == "GPT2ForSequenceClassification":
        expected["score.weight"] = (1, cfg.n_embd)
    given = {k: np.asarray(v) for k, v in state_dict.items() if k != "lm_head.weight"}   # tied: wte is written
    missing, unexpected = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
    problems = [f"missing {missing}"] * bool(missing) + [f"unexpected {unexpected}"] * bool(unexpected)
    problems += [f"{k} has shape {given[k].shape}, expected {expected[k]}"
                 for k in expected if k in given and given[k].shape != expected[k]]
    dtypes = sorted({a.dtype.name for a in given.values()})
    if len(dtypes) != 1 or dtypes[0] not in ("float32", "float64"):
        problems.append(f"the arrays must share one dtype, float32 or float64, got {dtypes}")
    if problems:
        raise ValueError(f"cannot export as {architecture}: " + "; ".join(problems))
    return {k: np.ascontiguousarray(given[k]) for k in expected}


def _safetensors_writer():
    """safetensors.numpy.save_file(arrays, path) with the metadata transformers expects; imported here because
    the rest of minigpt_np needs only NumPy."""
    try:
        from safetensors.numpy import save_file
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError('exporting needs the safetensors package: pip install -e ".[export]"') from e
    # "format": "pt" is what save_pretrained writes (modeling_utils.py:3434), and transformers 4.x refuses a
    # file whose metadata has no such entry (4.57.6: modeling_utils.py:487)
    return functools.partial(save_file, metadata={"format": "pt"})


def _tokenizer_path(path):
    path = os.fspath(path)
    return os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path


def _model_card(card, cfg, architecture, weights):
    """README.md: the metadata block the Hub reads, then `card`, or a short description of the model."""
    task = "text-generation" if architecture == "GPT2LMHeadModel" else "text-classification"
    n = sum(a.size for a in weights.values())
    body = card if card is not None else (
        f"# A tiny GPT-2 trained with minichatgpt\n\n{architecture}: {cfg.n_layer} layers, {cfg.n_head} heads, "
        f"{cfg.n_embd} channels, {cfg.block_size} positions, {cfg.vocab_size} tokens, {n:,} parameters. It was "
        "trained in NumPy by minichatgpt and opens with `from_pretrained(<this folder>)`.\n")
    return f"---\nlibrary_name: transformers\npipeline_tag: {task}\ntags:\n- minichatgpt\n- gpt2\n---\n\n{body}"
