"""docs/graduate.md's tables cannot drift: every trl name, default and line they quote is the one extracted from the
pinned wheels (tests/data/trl_1_16_0_fields.json, and trl_1_12_0_fields.json for PPO), every option of ours is the
field, default and flag our code has, every config field and every logged stat of ours has a row; and
scripts/trl_grpo_sentiment.py names only fields and arguments trl 1.16.0 has. trl is not imported.
"""
import ast
import dataclasses
import json
import re
from pathlib import Path

import pytest

import transformers
from minichatgpt.settings import config as app
from policy_gradcheck import group_batch, make_models
from ppo_np import METHODS, DPOConfig, GRPOConfig, PPOConfig, RLOOConfig
from ppo_np.reinforce import REINFORCEConfig
from reward import GPTRewardConfig

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "graduate.md"
SCRIPT = ROOT / "scripts" / "trl_grpo_sentiment.py"
TRL = {version: json.loads((ROOT / "tests" / "data" / f"trl_{version}_fields.json").read_text())
       for version in ("1_16_0", "1_12_0")}
OURS = {c.__name__: c for c in (PPOConfig, RLOOConfig, GRPOConfig, DPOConfig, REINFORCEConfig, GPTRewardConfig)}
NONE = "—"
CODE = re.compile(r"^`([^`]+)`$")


def tables(text):
    """Every Markdown table -> [(header cells, [row cells])]."""
    found, current = [], None
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if current is None:
                current = (cells, [])
                found.append(current)
            elif not set("".join(cells)) <= set("-: "):
                current[1].append(cells)
        else:
            current = None
    return found


def code(cell):
    """`x` -> "x"; "—" -> None; anything else -> ValueError."""
    if cell == NONE:
        return None
    m = CODE.match(cell)
    if not m:
        raise ValueError(f"{cell!r} is neither `code` nor {NONE}")
    return m.group(1)


def trl_release(cls):
    """PPO lives only in trl 1.12.0's extraction; everything else is trl 1.16.0's."""
    return TRL["1_12_0"] if cls in ("PPOConfig", "PPOTrainer") else TRL["1_16_0"]


def same_default(quoted, declared):
    if isinstance(declared, dict) and "expr" in declared:
        return quoted == declared["expr"]
    value = ast.literal_eval(quoted)
    return value == declared and type(value) is type(declared) or (
        isinstance(value, float) and isinstance(declared, float) and value == declared)


def check_our_flag(cell, cls, field):
    """A flag of the main job (`--x`) or of minichatgpt-compare sets this field -> problem or None."""
    flag = code(cell)
    if flag is None:
        return None
    if flag.startswith("minichatgpt-compare "):
        rows = {o.flag: o for o in app.compare_options()}
        option = rows.get(flag.split()[1])
        if option is None:
            return f"minichatgpt-compare has no {flag.split()[1]}"
        if field and not (option.field.endswith(field) or field.endswith(option.field) or field in option.help):
            return f"{flag} sets {option.field}, not {cls}.{field}"
        return None
    option = {o.flag: o for o in app.run_options()}.get(flag)
    if option is None:
        return f"minichatgpt has no {flag}"
    if field and option.field.split(".")[-1] != field:
        return f"{flag} sets {option.field}, not {cls}.{field}"
    return None


def check_option_row(row):
    """One row of an options table -> list of problems."""
    ours, flag, our_default, theirs, their_default, line, behaviour = row
    problems = []
    ours, theirs = code(ours), code(theirs)
    cls = field = None
    if ours is not None:
        cls, field = ours.split(".")
        fields = {f.name: f for f in dataclasses.fields(OURS[cls])} if cls in OURS else {}
        if field not in fields:
            problems.append(f"our {ours} does not exist")
        elif not same_default(code(our_default), fields[field].default):
            problems.append(f"our {ours} defaults to {fields[field].default!r}, the table says {our_default}")
    problem = check_our_flag(flag, cls, field)
    if problem:
        problems.append(problem)
    if theirs is not None:
        their_cls, their_field = theirs.split(".")
        entry = (trl_release(their_cls)["classes"].get(their_cls) or {}).get("fields", {}).get(their_field)
        if entry is None:
            problems.append(f"trl has no {theirs}")
        else:
            if not same_default(code(their_default), entry["default"]):
                problems.append(f"trl's {theirs} defaults to {entry['default']!r}, the table says {their_default}")
            if not entry["source"].endswith(code(line) or "?"):
                problems.append(f"trl's {theirs} is at {entry['source']}, the table says {line}")
    if not (behaviour.startswith("**differs**") or behaviour.startswith("same")):
        problems.append(f"{row[0]}: behaviour must start with **differs** or same")
    return problems


def check_stat_row(trainer, row):
    ours, theirs, line, behaviour = row
    problems = []
    theirs = code(theirs)
    if theirs is not None:
        names = (trl_release(trainer)["metrics"].get(trainer) or {}).get("names", {})
        if theirs not in names:
            problems.append(f"trl's {trainer} logs no {theirs}")
        elif not names[theirs].endswith(code(line) or "?"):
            problems.append(f"trl's {trainer} logs {theirs} at {names[theirs]}, the table says {line}")
    if not (behaviour.startswith("**differs**") or behaviour.startswith("same")):
        problems.append(f"{ours}: behaviour must start with **differs** or same")
    return problems


def check_doc(text):
    """-> (problems, {(class, field) of ours with a row}, {method: our stats with a row}, rows, differences)."""
    problems, options, stats, rows, differs = [], set(), {}, 0, 0
    for header, body in tables(text):
        for row in body:
            if header[:4] == ["ours", "flag", "our default", "trl"]:
                problems += check_option_row(row)
                if code(row[0]):
                    options.add(tuple(code(row[0]).split(".")))
            elif header[0].startswith("stat of "):
                problems += check_stat_row(header[1].split()[0], row)
                if code(row[0]):
                    stats.setdefault(header[0].split()[-1], set()).add(code(row[0]))
            else:
                continue
            rows += 1
            differs += row[-1].startswith("**differs**")
    return problems, options, stats, rows, differs


def logged_stats():
    """{method: the stats one step of its trainer logs, but time/}."""
    out = {}
    for name, method in METHODS.items():
        policy, ref = make_models()
        if method.values:
            policy.add_value_head(seed=1)
        sizes = dict(batch_size=4, forward_batch_size=2, mini_batch_size=2) if name == "dpo" else \
            dict(batch_size=8, forward_batch_size=4, mini_batch_size=4)
        sizes.update({"grpo": {"group_size": 4}, "rloo": {"rloo_k": 4}}.get(name, {}))
        trainer = method.trainer(policy, ref, method.config(**sizes))
        queries, responses, scores = group_batch(2, 4)
        stats = trainer.step(queries[:4], responses[:4], responses[4:]) if name == "dpo" else \
            trainer.step(queries, responses, scores)
        out[name] = {k for k in stats if not k.startswith("time/")}
    return out


def test_every_trl_name_default_and_line_in_the_tables_is_the_pinned_wheels():
    problems, _, _, rows, differs = check_doc(DOC.read_text())
    print(f"{rows} rows, {differs} marked **differs**")
    assert not problems, "\n".join(problems)
    assert rows > 100


def test_every_option_of_ours_has_a_row():
    _, options, _, _, _ = check_doc(DOC.read_text())
    every = {(name, f.name) for name, cls in OURS.items() for f in dataclasses.fields(cls)}
    assert every - options == set(), f"options without a row: {sorted(every - options)}"


def test_every_stat_a_step_logs_has_a_row_and_every_row_is_logged():
    _, _, stats, _, _ = check_doc(DOC.read_text())
    for method, logged in logged_stats().items():
        assert stats.get(method, set()) == logged, (method, sorted(logged ^ stats.get(method, set())))


@pytest.mark.parametrize("wrong, right", [
    ('`GRPOConfig.loss_type` | `"dapo"`', '`GRPOConfig.loss_type` | `"grpo"`'),             # trl's default
    ("`RLOOConfig.num_generations`", "`RLOOConfig.rloo_generations`"),                     # trl's name
    ("`trainer/grpo_config.py:681`", "`trainer/grpo_config.py:682`"),                      # trl's line
    ("| `DPOConfig.beta` | `minichatgpt-compare --dpo-beta` | `0.1` |",
     "| `DPOConfig.beta` | `minichatgpt-compare --dpo-beta` | `0.5` |"),                     # our default
    ("| `PPOConfig.vf_coef` | — |", "| `PPOConfig.vf_coeff` | — |"),                        # our name
    ("| `PPOConfig.ppo_epochs` | `--ppo-epochs` |", "| `PPOConfig.ppo_epochs` | `--epochs` |"),   # our flag
    ("| `grpo/policy/clipfrac_low` | `clip_ratio/low_mean` |",
     "| `grpo/policy/clipfrac_low` | `clip_ratio/lower_mean` |"),                          # trl's stat
])
def test_a_wrong_name_or_default_in_a_copy_of_the_table_is_caught(wrong, right):
    text = DOC.read_text()
    assert wrong in text, f"{wrong!r} is not in the doc"
    problems = check_doc(text.replace(wrong, right, 1))[0]
    assert problems, f"replacing {wrong!r} by {right!r} went unnoticed"


def test_the_trl_script_names_only_what_trl_1_16_0_has():
    tree = ast.parse(SCRIPT.read_text())
    trl = TRL["1_16_0"]
    config_fields = trl["classes"]["GRPOConfig"]["fields"]
    init = trl["metrics"]["GRPOTrainer"]["init_parameters"]
    calls = {name: [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == name]
             for name in ("GRPOConfig", "GRPOTrainer")}
    assert calls["GRPOConfig"] and calls["GRPOTrainer"]
    for call in calls["GRPOConfig"]:
        unknown = [k.arg for k in call.keywords if k.arg not in config_fields]
        assert not unknown, f"GRPOConfig has no {unknown}"
        for k in call.keywords:     # where the script keeps a default, say so by using it
            if k.arg in ("temperature", "num_iterations", "num_generations") and isinstance(k.value, ast.Constant):
                assert k.value.value is not None
    for call in calls["GRPOTrainer"]:
        assert [k.arg for k in call.keywords if k.arg not in init] == []
    imports = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    for module, name in imports:
        if module == "trl":
            assert name in trl["classes"] or name in trl["metrics"], f"trl 1.16.0 has no {name} we extracted"
        elif module == "transformers":
            assert hasattr(transformers, name), f"transformers {transformers.__version__} has no {name}"
    assert "trl 1.16.0" in ast.get_docstring(tree) and "transformers 5.25.0" in ast.get_docstring(tree)


def test_the_trl_script_runs_minichatgpt_compares_grpo():
    """The numbers its docstring quotes are the comparison's: a change of CompareConfig shows here."""
    tree = ast.parse(SCRIPT.read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "GRPOConfig")
    given = {k.arg: k.value.value for k in call.keywords if isinstance(k.value, ast.Constant)}
    compare = app.CompareConfig()
    assert given["per_device_train_batch_size"] * given["gradient_accumulation_steps"] == compare.batch_size
    assert given["per_device_train_batch_size"] == app.PPO.mini_batch_size      # compare's forward passes with a graph
    assert (given["num_generations"], given["beta"], given["learning_rate"], given["num_iterations"]) == (
        compare.methods["grpo_group_size"], compare.methods["grpo_beta"], compare.lr, compare.epochs)
    assert given["max_steps"] == compare.steps * compare.epochs      # trl counts optimizer steps
    assert given["max_completion_length"] == app.SAMPLING.response_tokens
