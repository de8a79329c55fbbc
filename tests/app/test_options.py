"""One option mechanism for every command: each command's parser, defaults and checks come from its rows, compare's
defaults from the main job's config, and the sweep's settings are the main job's flags, checked alike."""
import dataclasses
import importlib.util
import math

import pytest

from minichatgpt.commands import cli

from minichatgpt.settings import config
from minichatgpt.settings.options import Option, Parser, UsageError, add_arguments, check, checked, get

from tiny_run import fixture_corpus

COMMANDS = [  # (rows, the config their defaults come from)
    (config.run_options(), config.RunConfig()), (config.compare_options(), config.CompareConfig()),
    (config.OVEROPT_OPTIONS, config.OveroptConfig()), (config.SAMPLE_OPTIONS, config.SampleConfig()),
    (config.PRETRAIN_SAMPLE_OPTIONS, config.PRETRAIN_SAMPLES), (config.REWARD_FIT_OPTIONS, config.REWARD_FIT),
]


@pytest.mark.parametrize("options, defaults", COMMANDS)
def test_each_command_parses_its_rows_to_the_defaults_of_its_config(options, defaults):
    parser = Parser(prog="test")
    add_arguments(parser, options, defaults)
    values = checked(parser.parse_args([]), options, defaults)
    assert values == {o.field: get(defaults, o.field) for o in options}
    assert len({o.flag for o in options}) == len(options), "a flag is declared twice"
    for o in options:
        assert o.help and o.flag in parser.format_help()


def test_compare_takes_its_shared_defaults_from_the_main_jobs_config():
    cfg, ppo, rlhf, run = config.CompareConfig(), config.PPO, config.RLHF, config.RunConfig()
    assert (cfg.lr, cfg.batch_size, cfg.epochs) == (ppo.lr, ppo.batch_size, ppo.ppo_epochs)
    assert cfg.methods == run.methods == config.method_defaults()
    assert (run.methods["rloo_kl_coef"], run.methods["grpo_beta"], run.methods["dpo_beta"]) == (0.25, 0.25, 0.5)
    assert cfg.eval_prompts == run.eval_prompts
    # the budget: the main run's rollouts, rounded up to whole best-of-n samples per held-out prompt
    assert cfg.budget == 5888 == math.ceil(rlhf.steps * ppo.batch_size / run.eval_prompts) * run.eval_prompts


@pytest.mark.parametrize("option, value, message", [
    (Option("--x", "x", "h"), 0, "--x 0 is out of range: --x must be >= 1"),
    (Option("--x", "x", "h", above=0), 0.0, "--x 0.0 is out of range: --x must be > 0"),
    (Option("--x", "x", "h", above=0), math.inf, "--x inf is out of range: --x must be a finite number > 0"),
    (Option("--x", "x", "h", above=0, at_most=1), 1.5, "--x 1.5 is out of range: --x must be in (0, 1]"),
    (Option("--x", "x", "h", at_least=0, kind=float, many=True), (0.1, -1.0),
     "--x -1.0 is out of range: --x must be >= 0"),
    (Option("--x", "x", "h", at_least=2, why="a reason"), 1, "--x 1 is out of range: --x must be >= 2 (a reason)"),
])
def test_a_value_outside_its_rows_bounds_is_refused_naming_the_flag(option, value, message):
    with pytest.raises(ValueError) as e:
        check({"x": value}, [option], None, by_flag=True)
    assert str(e.value) == message
    check({"x": None}, [option], None, by_flag=True)            # an option left unset is not checked


def test_the_same_rules_name_flags_on_the_command_line_and_fields_in_python():
    with pytest.raises(ValueError, match=r"^--budget 100 must be a multiple of --batch-size 64$"):
        check({"budget": 100}, config.compare_options(), config.CompareConfig(), config.compare_rules, by_flag=True)
    with pytest.raises(ValueError, match=r"^budget 100 must be a multiple of batch_size 64$"):
        config.CompareConfig(budget=100)
    with pytest.raises(ValueError, match="plus sampling.response_tokens 60 exceed model.block_size 64"):
        config.with_values({"sampling.response_tokens": 60})
    with pytest.raises(ValueError, match="plus --response-tokens 60 exceed --block-size 64"):
        check({"sampling.response_tokens": 60}, config.run_options(), config.RunConfig(), config.run_rules, by_flag=True)
    with pytest.raises(ValueError, match="must equal sampling.forward_batch_size 16"):
        config.RunConfig(ppo=dataclasses.replace(config.PPO, forward_batch_size=8))


@pytest.mark.parametrize("argv, message", [
    (["--n-max", "6"], "--n-max must be a power of two, got 6"),
    (["--rl-kl-coef", "-1"], "--rl-kl-coef -1.0 is out of range: --rl-kl-coef must be >= 0"),
    (["--proxy-sizes", "250", "1"], "--proxy-sizes 1 is out of range: --proxy-sizes must be >= 2"),
])
def test_overopt_refuses_bad_options_before_anything(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        cli.overopt_main(["--name", "x", "--runs-dir", str(tmp_path / "runs")] + argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv, message", [
    (["--samples", "-1"], "--samples -1 is out of range: --samples must be >= 0"),
    (["--vocab-size", "100"], "--vocab-size 100 is out of range: --vocab-size must be >= 257 (256 bytes"),
])
def test_pretrain_refuses_bad_options(tmp_path, capsys, argv, message):
    corpus = fixture_corpus(tmp_path / "reviews.csv")
    with pytest.raises(SystemExit) as e:
        cli.pretrain_main(["--corpus", str(corpus), "--out-dir", str(tmp_path / "pt")] + argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "pt").exists()


def test_reward_refuses_a_negative_l2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.reward_main(["--l2", "1e-4", "-1", "--out", str(tmp_path / "r.npz")])
    assert e.value.code == 2 and "--l2 -1.0 is out of range: --l2 must be >= 0" in capsys.readouterr().err


def _sweep():
    spec = importlib.util.spec_from_file_location("sweep", config.__file__.replace(
        "minichatgpt/settings/config.py", "scripts/sweep.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_sweep_setting_is_the_main_jobs_flags_over_the_runs_config():
    sweep, run = _sweep(), config.with_values({"seed": 3, "rlhf.steps": 10})
    setting = sweep.setting_of("--lr 1e-4 --ppo-steps 80 --no-adaptive-kl --forward-batch-size 8", run)
    assert (setting.ppo.lr, setting.rlhf.steps, setting.ppo.adap_kl_ctrl) == (1e-4, 80, False)
    assert setting.sampling.forward_batch_size == setting.ppo.forward_batch_size == 8
    assert setting.ppo.seed == setting.rlhf.seed == 3 and setting.model == run.model
    assert sweep.setting_of("--seed 1", run).ppo.seed == 1
    other = sweep.setting_of("--method grpo --grpo-beta 0.1", run)
    assert (other.method, other.methods["grpo_beta"], other.ppo.lr) == ("grpo", 0.1, run.ppo.lr)
    for text, message in (("--batch-size 20", "--batch-size 20 must be a multiple of --forward-batch-size 16"),
                          ("--lr 0", "--lr 0.0 is out of range: --lr must be > 0"),
                          ("--n-layer 2", "unrecognized arguments: --n-layer 2"),
                          ("--grpo-beta 0.1", "--grpo-beta 0.1 shapes --method grpo only")):
        with pytest.raises(UsageError, match=message):
            sweep.setting_of(text, run)
