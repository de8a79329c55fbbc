"""The built distribution holds the fast kernels: a wheel built from the project (offline, from a copy of the
sources, so the checkout is left as it is) imports minigpt_np.fast and trains a step on it in a fresh interpreter
that sees the wheel's files and not the checkout's."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "minigpt_np", "ppo_np", "reward", "minichatgpt")

STEP = """
import sys
import numpy as np
import minigpt_np as mg
import minigpt_np.fast
assert minigpt_np.fast.__file__.startswith(sys.argv[1]), minigpt_np.fast.__file__
mg.kernels.use("fast")
model = mg.GPT(mg.GPTConfig(vocab_size=17, block_size=8, n_layer=1, n_head=2, n_embd=8), seed=0)
windows = np.random.default_rng(0).integers(0, 17, (4, 9))
print(mg.pretrain.loss_and_gradients(model, windows), minigpt_np.fast.cores.blas() is not None)
"""


def build_wheel(tmp_path, without=None):
    """The project's wheel, built offline from a copy of its sources -> (its path, the names it holds). without: a
    package left out of pyproject.toml's list (the negative control)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, source / name)
    if without:
        pyproject = (source / "pyproject.toml").read_text()
        (source / "pyproject.toml").write_text(pyproject.replace(f'"{without}", ', ""))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "--quiet", "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    wheel, = (tmp_path / "dist").glob("minichatgpt-*.whl")
    return wheel, zipfile.ZipFile(wheel).namelist()


def missing_fast_modules(names):
    return [m for m in ("__init__", "ops", "functional", "optim", "pretrain", "cores", "blocks", "memory")
            if f"minigpt_np/fast/{m}.py" not in names]


def test_a_built_wheel_holds_the_fast_kernels_and_they_run_from_it(tmp_path):
    wheel, names = build_wheel(tmp_path)
    assert not missing_fast_modules(names), f"the wheel lacks minigpt_np/fast/{missing_fast_modules(names)}"
    installed = tmp_path / "installed"
    zipfile.ZipFile(wheel).extractall(installed)
    ran = subprocess.run([sys.executable, "-c", STEP, str(installed)], capture_output=True, text=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin",
                                            "OPENBLAS_NUM_THREADS": "1"})
    assert ran.returncode == 0, ran.stderr
    loss, found_blas = ran.stdout.split()
    assert 2.0 < float(loss) < 4.0 and found_blas == "True"     # ln 17 = 2.83 at initialisation


def test_a_wheel_built_without_the_subpackage_listed_lacks_the_fast_kernels(tmp_path):
    """Negative control: setuptools packages only what pyproject.toml lists; the check above would catch it."""
    _, names = build_wheel(tmp_path, without="minigpt_np.fast")
    assert "minigpt_np/ops.py" in names and missing_fast_modules(names)
