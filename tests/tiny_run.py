"""A tiny run of the main job for the tests: a labelled fixture corpus of 120 rows and options that make the
whole pipeline take a few seconds."""

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
            "--eval-prompts", "8", "--checkpoint-every", "2", *extra]


def kill_ppo_in_step(monkeypatch, n, error=KeyboardInterrupt):
    """Make the n-th PPOTrainer.step raise `error` (a kill after the checkpoint of step n - 1); -> the real step."""
    from ppo_np.trainer import PPOTrainer
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
