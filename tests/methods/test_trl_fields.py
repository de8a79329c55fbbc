"""scripts/trl_fields.py reads TRL's config fields with ast; tests/data/trl_1_16_0_fields.json is its output on the
trl 1.16.0 wheel. Checked here on a made-up package laid out as a wheel is, so no trl is needed."""
import importlib.util
import json
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("trl_fields", ROOT / "scripts" / "trl_fields.py")
trl_fields = importlib.util.module_from_spec(spec)
spec.loader.exec_module(trl_fields)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


@pytest.fixture
def wheels(tmp_path):
    """A fake trl (GRPOConfig <- _BaseConfig <- TrainingArguments, no PPOConfig) and a fake transformers."""
    trl, tf = tmp_path / "trl_src", tmp_path / "tf_src"
    write(trl / "trl" / "__init__.py", "")
    write(trl / "trl-9.9.9.dist-info" / "METADATA", "Metadata-Version: 2.4\nName: trl\nVersion: 9.9.9\n")
    write(trl / "trl" / "trainer" / "base_config.py", """\
        from transformers import TrainingArguments
        class _BaseConfig(TrainingArguments):
            logging_steps: float = field(default=10, metadata={"help": "..."})
        """)
    write(trl / "trl" / "trainer" / "grpo_config.py", """\
        class GRPOConfig(_BaseConfig):
            learning_rate: float = field(default=1e-6)
            loss_type: str = field(default="dapo", metadata={"help": "..."})
            epsilon_high: float | None = None
            reward_funcs: list[str] = field(default_factory=lambda: ["accuracy"])
            model_name: str = field(default=os.path.basename("x"))
            output_dir: str = field(metadata={"help": "required"})
        """)
    write(trl / "trl" / "trainer" / "grpo_trainer.py", """\
        class GRPOTrainer:
            def __init__(self, model, reward_funcs=None, *, args=None):
                pass
            def _compute_loss(self, mode, name):
                self._metrics[mode]["kl"].append(1.0)
                self._metrics["train"]["step_time"].append(2.0)
                self._metrics[mode][f"rewards/{name}/mean"].append(3.0)
                self._metrics[mode]["kl"].append(4.0)
                other["not_a_metric"] = 5
        """)
    write(trl / "trl" / "experimental" / "x" / "grpo_trainer.py", "class GRPOTrainer:\n    pass\n")
    write(tf / "transformers" / "__init__.py", "")
    write(tf / "transformers-1.0.0.dist-info" / "METADATA", "Name: transformers\nVersion: 1.0.0\n")
    write(tf / "transformers" / "training_args.py", """\
        class TrainingArguments:
            learning_rate: float = field(default=5e-5)
            seed: int = field(default=42)
            adam_beta1: float = field(default=0.9)
        """)
    return trl, tf


def test_fields_are_read_with_their_defaults_lines_and_inherited_values(wheels):
    trl, tf = wheels
    doc = trl_fields.extract(trl, tf)
    assert doc["trl_version"] == "9.9.9" and doc["transformers_version"] == "1.0.0"
    assert doc["classes"]["PPOConfig"] is None                       # absent from this release: null, not an error
    grpo = doc["classes"]["GRPOConfig"]
    assert grpo["source"] == "trl/trainer/grpo_config.py:1" and grpo["bases"] == ["_BaseConfig", "TrainingArguments"]
    fields = grpo["fields"]
    # a field TRL redeclares keeps TRL's default and line; transformers' own fields only if in BASE_FIELDS
    assert fields["learning_rate"] == {"source": "trl/trainer/grpo_config.py:2", "default": 1e-6}
    assert fields["seed"] == {"source": "transformers/training_args.py:3", "default": 42}
    assert "adam_beta1" not in fields
    assert fields["logging_steps"]["default"] == 10
    assert fields["loss_type"]["default"] == "dapo" and fields["epsilon_high"]["default"] is None
    assert fields["reward_funcs"]["default"] == ["accuracy"]
    assert fields["model_name"]["default"] == {"expr": "os.path.basename('x')"}
    assert fields["output_dir"] == {"source": "trl/trainer/grpo_config.py:7", "required": True}
    # the trainer under trl/trainer wins over an experimental one of the same name; f-string names are left out
    assert doc["metrics"]["GRPOTrainer"] == {
        "source": "trl/trainer/grpo_trainer.py:1", "init_parameters": ["model", "reward_funcs", "args"],
        "names": {"kl": "trl/trainer/grpo_trainer.py:5", "step_time": "trl/trainer/grpo_trainer.py:6"}}
    assert doc["metrics"]["PPOTrainer"] is None


def test_a_folder_without_the_package_is_refused_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        trl_fields.main([str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "holds no trl/__init__.py" in err


def test_the_committed_trl_1_16_0_file_has_every_class_and_the_base_fields():
    doc = json.loads((ROOT / "tests" / "data" / "trl_1_16_0_fields.json").read_text())
    assert doc["trl_version"] == "1.16.0"
    assert set(doc["classes"]) == set(trl_fields.CLASSES) and doc["classes"]["PPOConfig"] is None
    for name in ("GRPOConfig", "RLOOConfig", "DPOConfig", "RewardConfig"):
        fields = doc["classes"][name]["fields"]
        assert set(trl_fields.BASE_FIELDS) <= set(fields), name
        assert all(":" in entry["source"] for entry in fields.values())
