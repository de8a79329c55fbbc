"""A tiny run of the main job for the tests: a labelled fixture corpus of 120 rows and options that make the
whole pipeline take a few seconds (its test split holds 12 labelled reviews: 3 held-out prompts); tiny runs built
once per pytest run (`Built`, the `built_runs` fixture of conftest.py) to copy; and how the tests run a command
and read its refusal."""
import hashlib
import os
import shutil

GOOD = ["a warm , funny and moving film", "the cast is wonderful and the script is smart",
        "a beautiful , heartfelt story told with grace", "one of the best films of the year",
        "sharp writing and a terrific lead performance", "an utterly charming and delightful comedy"]
BAD = ["a dull , lifeless and tedious mess", "the plot is stupid and the acting is awful",
       "a boring , predictable waste of time", "one of the worst films of the year",
       "clumsy writing and a wooden lead performance", "an utterly joyless and pointless comedy"]


def fixture_corpus(path):
    """A small labelled CSV: each template sentence with a few movie names, one movie per row group."""
    rows = ["text,label,movie"]
    for k, title in enumerate(["the heist", "summer rain", "iron coast", "night train", "blue valley",
                               "the long road", "paper moon", "cold harbor", "red desert", "the visitor"]):
        for i, (good, bad) in enumerate(zip(GOOD, BAD)):
            rows.append(f'"{title} is {good} .",fresh,m{k}')
            rows.append(f'"{title} is {bad} .",rotten,m{k}')
    path.write_text("\n".join(rows) + "\n")
    return path


def tiny_args(tmp_path, name, corpus, *extra):
    return ["--name", name, "--runs-dir", str(tmp_path / "runs"), "--corpus", str(corpus), "--quiet",
            "--vocab-size", "300", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "32",
            "--pretrain-steps", "30", "--pretrain-seconds", "60", "--ppo-steps", "4", "--batch-size", "8",
            "--forward-batch-size", "4", "--mini-batch-size", "4", "--response-tokens", "6",
            "--eval-prompts", "3", "--checkpoint-every", "2", *extra]


class Built:
    """Finished tiny runs, each built once in `folder` from its extra flags, then copied by the tests that change one.

        run_dir, corpus = built("--method", "grpo")       # the run (build it the first time)
        copy = built.copy(tmp_path, "x", "--method", "grpo")   # tmp_path/runs/x, a copy to change
    """

    def __init__(self, folder):
        self.folder, self.runs = folder, {}
        self.corpus = fixture_corpus(folder / "reviews.csv")

    def __call__(self, *extra):
        if extra not in self.runs:
            from minichatgpt.commands import cli
            name = f"built{len(self.runs)}"
            cli.run_main(tiny_args(self.folder, name, self.corpus, *extra))
            self.runs[extra] = self.folder / "runs" / name
        return self.runs[extra], self.corpus

    def copy(self, tmp_path, name, *extra):
        """A copy of the run built from `extra`, as tmp_path/runs/<name> -> its path."""
        copy = tmp_path / "runs" / name
        shutil.copytree(self(*extra)[0], copy, symlinks=True)
        return copy


def kill_ppo_in_step(monkeypatch, n, error=KeyboardInterrupt):
    """Make the n-th PPOTrainer.step raise `error` (a kill after the checkpoint of step n - 1); -> the real step."""
    from ppo_np.ppo import PPOTrainer
    return kill_in_step(monkeypatch, PPOTrainer, n, error)


def kill_in_step(monkeypatch, trainer_class, n, error=KeyboardInterrupt):
    """Make the n-th trainer_class.step raise `error` (RLOOTrainer, GRPOTrainer, ...); -> the real step."""
    real_step, calls = trainer_class.step, {"n": 0}

    def dies(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise error if isinstance(error, BaseException) else error("killed")
        return real_step(self, *args, **kwargs)
    monkeypatch.setattr(trainer_class, "step", dies)
    return real_step


def run_cli(capsys, argv, main=None):
    """-> (exit status, stderr) of a console entry point (default: minichatgpt's)."""
    from minichatgpt.commands import cli
    try:
        (main or cli.main)(argv)
        status = 0
    except SystemExit as e:
        status = e.code
    return status, capsys.readouterr().err


def assert_one_line_refusal(status, err, expected_status, *fragments):
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == expected_status, f"exit status {status}, expected {expected_status}: {err}"
    assert len(lines) == 1 and "Traceback" not in err, f"not one line on stderr:\n{err}"
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def snapshot(folder):
    """{relative path: (sha256, mtime_ns)} of every file under folder, and {relative path: "folder"} of every folder,
    but the lock, whose pid each process rewrites: equal snapshots mean a byte-identical, untouched folder."""
    out = {}
    for root, folders, files in os.walk(folder):
        for name in folders:
            out[os.path.relpath(os.path.join(root, name), folder)] = "folder"
        for name in files:
            if name == ".lock":
                continue
            file = os.path.join(root, name)
            with open(file, "rb") as f:
                out[os.path.relpath(file, folder)] = (hashlib.sha256(f.read()).hexdigest(), os.stat(file).st_mtime_ns)
    return out
