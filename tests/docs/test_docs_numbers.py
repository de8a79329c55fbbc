"""The numbers that docs/ppo.md, docs/gpt.md and README.md quote from code defaults equal the code's.

A quote is the doc's own wording with `@` where each number stands, e.g. "The pipeline's lr is @", and the code
value each `@` must equal. The wording matches across line breaks (any run of whitespace matches any other),
and `@` matches a number written as 64, 4,096, 0.95, 2e-4, 2 \\times 10^{-4} or 10^{-5}. Every occurrence of a
wording must carry the code's numbers, and the wording must occur at least once, so rewording or deleting a
quote fails too: then update the doc or the quote below. Derived numbers (0.2 x 64 / 10000 = 0.00128) are
`approx`: they must equal the code's value to the precision the doc writes them with.

A failure names the document, the line, the number found and the code value. Checked by hand: with the
pipeline's lr in docs/ppo.md changed to 3e-4 and TRL's "target 6" to 5 (then put back), the test failed with

    docs/ppo.md:51: says '3 \\times 10^{-4}' but config.PPO.lr is 0.0002   [changes three of them, ... lr $3 ...]
    docs/ppo.md:343: says '5' but PPOConfig().target is 6.0   [defaults $\\beta_0 = 0.2$, target 5, $H = 10000$. ...]

The negative controls at the end of this file do the same in both directions, without touching any file: a
made-up document with wrong numbers, and the real docs against a config whose lr and vocabulary were changed.

README.md is checked in its own function, `test_readme_quotes_the_code_defaults`, so that its wording can
change independently of the docs.
"""
import dataclasses
import math
import re
from pathlib import Path

from minichatgpt.settings import config
from minigpt_np import ops
from ppo_np.ppo import PPOConfig

ROOT = Path(__file__).resolve().parents[2]

# 10^{-5} | 4,096 | 2e-4 | 0.95 | 2 \times 10^{-4}
NUMBER = (r"(10\^\{-?\d+\}"
          r"|\d{1,3}(?:,\d{3})+(?:\.\d+)?"
          r"|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?:\s*\\times\s*10\^\{-?\d+\})?)")


@dataclasses.dataclass
class Quote:
    wording: str            # the doc's words, `@` for each number
    numbers: list           # [(name, value)] from the code, one per `@`
    approx: bool = False    # derived numbers: equal to the precision written in the doc


def code(name, obj, *fields):
    """[(name.field, value)] for fields of a config object."""
    return [(f"{name}.{field}", getattr(obj, field)) for field in fields]


def parse_number(text):
    """The value of a number as the docs write it (see NUMBER)."""
    text = text.replace(",", "")
    power = re.fullmatch(r"10\^\{(-?\d+)\}", text)
    if power:
        return 10.0 ** int(power.group(1))
    scientific = re.fullmatch(r"(.+?)\s*\\times\s*10\^\{(-?\d+)\}", text)
    if scientific:
        return float(scientific.group(1)) * 10.0 ** int(scientific.group(2))
    return float(text)


def decimals(text):
    """Digits after the decimal point of a plainly written number: the precision an approx quote is held to."""
    plain = re.fullmatch(r"[\d,]*\.(\d+)", text)
    return len(plain.group(1)) if plain else 0


def wording_pattern(wording):
    parts = [re.sub(r"(\\\s)+", r"\\s+", re.escape(part)) for part in wording.split("@")]
    return re.compile(NUMBER.join(parts))


def agrees(text, value, approx):
    found = parse_number(text)
    if approx:
        return abs(found - value) <= 0.5 * 10.0 ** -decimals(text) * (1 + 1e-9)
    return math.isclose(found, value, rel_tol=1e-12, abs_tol=0.0)


def check_quotes(doc, quotes, root=ROOT):
    """Every quote of `doc` whose numbers differ from the code's, or whose wording is gone -> list of messages."""
    doc = Path(doc)
    text = doc.read_text(encoding="utf-8")
    lines = text.splitlines()
    name = doc.relative_to(root) if doc.is_relative_to(root) else doc
    problems = []
    for quote in quotes:
        assert quote.wording.count("@") == len(quote.numbers), f"quote {quote.wording!r}: one number per @"
        matches = list(wording_pattern(quote.wording).finditer(text))
        if not matches:
            sources = ", ".join(n for n, _ in quote.numbers)
            problems.append(f"{name}: no longer contains the wording {quote.wording!r} (it quotes {sources}); "
                            "update the doc or the quote in tests/docs/test_docs_numbers.py")
        for match in matches:
            for i, (source, value) in enumerate(quote.numbers, start=1):
                if not agrees(match.group(i), value, quote.approx):
                    line = text.count("\n", 0, match.start(i)) + 1
                    problems.append(f"{name}:{line}: says {match.group(i)!r} but {source} is {value!r}   "
                                    f"[{lines[line - 1].strip()[:100]}]")
    return problems


# ------------------------------------------------------------------------------------------------ what is quoted
def ppo_doc_quotes():
    """docs/ppo.md. Read at test time, so that a patched config is seen (the negative control)."""
    TRL, PPO, RLHF, MODEL, SAMPLING = PPOConfig(), config.PPO, config.RLHF, config.MODEL, config.SAMPLING
    step = 0.2 * PPO.batch_size / PPO.horizon           # the largest move of beta per step, |e| n / H
    beta0, steps = PPO.init_kl_coef, RLHF.steps
    columns = RLHF.query_max_tokens + SAMPLING.response_tokens
    return [
        Quote("defaults to TRL 0.1's `default_params`: lr $@$, batch @, forward batch @, @ PPO epochs, initial KL "
              "coefficient @, target KL @, horizon @, $\\gamma$ @, $\\lambda$ @, cliprange @, cliprange_value @, "
              "vf_coef @. Its mini-batch of @ row",
              code("PPOConfig()", TRL, "lr", "batch_size", "forward_batch_size", "ppo_epochs", "init_kl_coef",
                   "target", "horizon", "gamma", "lam", "cliprange", "cliprange_value", "vf_coef",
                   "mini_batch_size")),
        Quote("trained for minutes: lr $@$, batch @, mini-batch @",
              code("config.PPO", PPO, "lr", "batch_size", "mini_batch_size")),
        Quote("Defaults $\\gamma = @$, $\\lambda = @$ (TRL's)", code("PPOConfig()", TRL, "gamma", "lam")),
        Quote("`vf_coef = @`", code("PPOConfig()", TRL, "vf_coef")),
        Quote("The pipeline (batch @ in mini-batches of @, @ epochs) has $\\rho = 1$ in the first of its @",
              code("config.PPO", PPO, "batch_size", "mini_batch_size", "ppo_epochs")
              + [("ppo_epochs * batch_size / mini_batch_size",
                  PPO.ppo_epochs * PPO.batch_size // PPO.mini_batch_size)]),
        Quote("TRL 0.1 (batch @ in one-row mini-batches, @ epochs) has it only in the first of its @",
              code("PPOConfig()", TRL, "batch_size", "ppo_epochs")
              + [("ppo_epochs * batch_size", TRL.ppo_epochs * TRL.batch_size)]),
        Quote("default lr $@$. The pipeline's lr is $@$", [("PPOConfig().lr", TRL.lr), ("config.PPO.lr", PPO.lr)]),
        Quote("defaults $\\beta_0 = @$, target @, $H = @$",
              code("PPOConfig()", TRL, "init_kl_coef", "target", "horizon")),
        Quote("$|e|\\, n / H = @ \\times @ / @ = @$ per step, that is @% at batch @",
              [("the controller's clip of e", 0.2), ("config.PPO.batch_size", PPO.batch_size),
               ("config.PPO.horizon", PPO.horizon), ("0.2 batch_size / horizon", step),
               ("100 x that", 100 * step), ("config.PPO.batch_size", PPO.batch_size)], approx=True),
        Quote("The pipeline's @ steps move $\\beta$ from @ to at most $@ \\times @^{@} = @$ (or down to @)",
              [("config.RLHF.steps", steps), ("config.PPO.init_kl_coef", beta0), ("config.PPO.init_kl_coef", beta0),
               ("1 + 0.2 batch_size / horizon", 1 + step), ("config.RLHF.steps", steps),
               ("the largest beta after those steps", beta0 * (1 + step) ** steps),
               ("the smallest beta after those steps", beta0 * (1 - step) ** steps)], approx=True),
        Quote("$\\ln 2 / \\ln @ \\approx @$ steps",
              [("1 + 0.2 batch_size / horizon", 1 + step), ("steps to double beta", math.log(2) / math.log1p(step))],
              approx=True),
        Quote("(@ rows, @ columns and $V = @$ in float32: @ MB each)",
              [("config.PPO.forward_batch_size", PPO.forward_batch_size),
               ("config.RLHF.query_max_tokens + config.SAMPLING.response_tokens", columns),
               ("config.MODEL.vocab_size", MODEL.vocab_size),
               ("rows x columns x V x 4 bytes / 1e6", PPO.forward_batch_size * columns * MODEL.vocab_size * 4 / 1e6)],
              approx=True),
        Quote("with our prompts of @ to @ tokens", code("config.RLHF", RLHF, "query_min_tokens", "query_max_tokens")),
        Quote("the first @ to @ tokens of reviews", code("config.RLHF", RLHF, "query_min_tokens", "query_max_tokens")),
        Quote("each response has at most @ new tokens", code("config.SAMPLING", SAMPLING, "response_tokens")),
        Quote("policy on @ held-out prompts", code("config.RunConfig()", config.RunConfig(), "eval_prompts")),
    ]


def gpt_doc_quotes():
    """docs/gpt.md."""
    PRETRAIN, MODEL = config.PRETRAIN, config.MODEL
    # where the cosine decay ends: PretrainConfig states it as a ratio of the peak lr (earlier: min_lr itself)
    if hasattr(PRETRAIN, "min_lr_ratio"):
        end_lr = ("config.PRETRAIN.lr * min_lr_ratio", PRETRAIN.lr * PRETRAIN.min_lr_ratio)
    else:
        end_lr = ("config.PRETRAIN.min_lr", PRETRAIN.min_lr)
    return [
        Quote("$\\varepsilon = @$ (`ops.LN_EPS`)", [("minigpt_np.ops.LN_EPS", ops.LN_EPS)]),
        Quote("are @ updates of @ windows of @ tokens, vocabulary @, peak lr $@$ after @ warmup updates, cosine "
              "decay to $@$, weight decay @, betas (@, @) and gradient clip @",
              code("config.PRETRAIN", PRETRAIN, "max_steps", "batch_size")
              + [("config.PRETRAIN.block_size or config.MODEL.block_size", PRETRAIN.block_size or MODEL.block_size),
                 ("config.MODEL.vocab_size", MODEL.vocab_size)]
              + code("config.PRETRAIN", PRETRAIN, "lr", "warmup_steps") + [end_lr]
              + code("config.PRETRAIN", PRETRAIN, "weight_decay", "beta1", "beta2", "grad_clip")),
    ]


def readme_quotes():
    """README.md, wordings that it holds today (the PPO step of its tutorial). Every option's default is in
    docs/cli.md, written from the option rows themselves (tests/docs/test_cli_doc.py)."""
    TRL, PPO = PPOConfig(), config.PPO
    return [
        Quote("`PPOConfig` defaults are TRL 0.1's (lr @, batch @, forward batch @, mini-batch @,",
              code("PPOConfig()", TRL, "lr", "batch_size", "forward_batch_size", "mini_batch_size")),
        Quote("the pipeline uses lr @, batch @, mini-batch @, @ epochs", code("config.PPO", PPO, "lr", "batch_size",
                                                                              "mini_batch_size", "ppo_epochs")),
        Quote("PPOConfig(lr=@, batch_size=@, forward_batch_size=@, mini_batch_size=@, ppo_epochs=@)",
              code("config.PPO", PPO, "lr", "batch_size", "forward_batch_size", "mini_batch_size", "ppo_epochs")),
    ]


# ------------------------------------------------------------------------------------------------------- tests
def test_docs_quote_the_code_defaults():
    problems = (check_quotes(ROOT / "docs" / "ppo.md", ppo_doc_quotes())
                + check_quotes(ROOT / "docs" / "gpt.md", gpt_doc_quotes()))
    # docs/ppo.md: "The pipeline ... changes five of them": lr, batch 64, mini-batch 16, 2 epochs, a fixed KL
    # coefficient
    changed = {f.name for f in dataclasses.fields(PPOConfig) if f.name != "seed"
               and getattr(config.PPO, f.name) != getattr(PPOConfig(), f.name)}
    if changed != {"lr", "batch_size", "mini_batch_size", "ppo_epochs", "adap_kl_ctrl"}:
        problems.append(f"docs/ppo.md says the pipeline changes lr, batch, mini-batch, epochs and the KL controller of "
                        "PPOConfig's defaults; "
                        f"config.PPO changes {sorted(changed)}")
    assert not problems, f"{len(problems)} quoted number(s) differ from the code:\n" + "\n".join(problems)


def test_readme_quotes_the_code_defaults():
    """README.md is edited on its own schedule: adjust this function, not the one above, when its wording moves."""
    problems = check_quotes(ROOT / "README.md", readme_quotes())
    assert not problems, f"{len(problems)} quoted number(s) differ from the code:\n" + "\n".join(problems)


def test_checker_reports_a_changed_number_and_a_gone_wording_with_its_line(tmp_path):
    """Negative control on a made-up document: each kind of problem is reported, at its own line."""
    doc = tmp_path / "doc.md"
    doc.write_text("# Title\n"                                       # 1
                   "Here the lr is $2 \\times 10^{-4}$, the batch\n"  # 2  right, across a line break
                   "64; later the lr is $3 \\times 10^{-4}$, the batch 64.\n"   # 3  wrong lr
                   "Vocabulary 4,096 tokens, eps $10^{-5}$.\n"      # 4
                   "About 6.3 MB.\n")                               # 5
    quotes = [Quote("the lr is $@$, the batch @", [("lr", 2e-4), ("batch", 64)]),
              Quote("Vocabulary @ tokens, eps $@$", [("vocab", 4096), ("eps", 1e-5)]),
              Quote("About @ MB", [("bytes / 1e6", 6.29)], approx=True),
              Quote("About @ MB", [("bytes / 1e6", 6.4)], approx=True),
              Quote("a wording that is gone @", [("x", 1)])]
    problems = check_quotes(doc, quotes, root=tmp_path)
    print("\n".join(problems))
    assert len(problems) == 3, problems
    assert problems[0].startswith("doc.md:3: says '3 \\\\times 10^{-4}' but lr is 0.0002")
    assert problems[1].startswith("doc.md:5: says '6.3' but bytes / 1e6 is 6.4")
    assert "no longer contains the wording 'a wording that is gone @'" in problems[2]


def test_checker_catches_a_changed_code_default(monkeypatch):
    """Negative control on the real docs: with the pipeline's lr or the model's vocabulary changed in the code,
    the doc lines that quote them are reported."""
    monkeypatch.setattr(config, "PPO", dataclasses.replace(config.PPO, lr=3e-4))
    monkeypatch.setattr(config, "MODEL", dataclasses.replace(config.MODEL, vocab_size=2048))
    problems = (check_quotes(ROOT / "docs" / "ppo.md", ppo_doc_quotes())
                + check_quotes(ROOT / "docs" / "gpt.md", gpt_doc_quotes()))
    print("\n".join(problems))
    assert any("config.PPO.lr is 0.0003" in p for p in problems), problems
    assert any(p.startswith("docs/gpt.md:") and "config.MODEL.vocab_size is 2048" in p for p in problems), problems
    assert any(p.startswith("docs/ppo.md:") and "config.MODEL.vocab_size is 2048" in p for p in problems), problems
    readme_problems = check_quotes(ROOT / "README.md", readme_quotes())
    assert any(p.startswith("README.md:") and "config.PPO.lr is 0.0003" in p for p in readme_problems), readme_problems
