"""Every measured table of the docs, measured by one command in one sitting and written between markers.

    python scripts/results.py list                    # the sources: what each runs, about how long it takes
    python scripts/results.py measure                 # every source in one sitting, then render
    python scripts/results.py measure --only compare  # one source again (then render)
    python scripts/results.py render                  # every marked table of README.md and docs/*.md, from the JSON

`measure` runs the commands a reader would run, each in a fresh process, into a runs folder of its own (--runs-dir,
default runs/results): the main job on seeds 0 to 2, the quick preset, every other method on a copy of seed 0's run,
minichatgpt-compare, minichatgpt-overopt and its --cross-kind, the sweep rows that show how the default was chosen,
and the two benchmarks. A source's own folders are deleted first, so nothing is reused from another sitting; a run a
source builds on (seed 0's, for the experiments) is made if it is missing. It writes docs/results/<source>.json: the
summaries the tables need, each with the exact command that made it and the sha256 of the manifest of the folder it
came from, and the stamp of what the source was measured on (the CPU and its vector class, NumPy, the BLAS and its
kernels, the date, the load average, the seconds it took). It copies the pictures the docs show beside them. Only
this command writes docs/results/.

`render` writes each table between its markers, `<!-- results:NAME -->` and `<!-- /results:NAME -->`, from the JSON
alone, with its stamp below it; a table whose source was not measured says so. tests/docs/test_results.py checks that
every marked table is what `render` writes, and that every JSON carries its stamp, commands and manifest hashes.

--tiny runs every source at toy sizes into a --results-dir other than docs/results: it tests this machinery, and
its numbers mean nothing.
"""
import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
SEEDS = (0, 1, 2)
BASE = "seed0"                       # the run the experiments and the other methods build on

# what a policy should reach on 256 held-out prompts, the frontier the default was chosen on (docs/experiments.md):
# (name in the tables, what it asks, metric, "at least" or "at most", bound, relative to the reference's value)
TARGETS = [
    ("lex+", "the lexicon finds answers positive", "lexicon_positive", "at least", 0.85, False),
    ("lex-", "the lexicon finds answers negative", "lexicon_negative", "at most", 0.05, False),
    ("top", "answers that hold the most frequent word", "top_word_share", "at most", 0.40, False),
    ("uniq", "unique answers", "unique_share", "at least", 0.95, False),
    ("len", "answer length, of the reference's", "response_tokens", "at least", 0.75, True),
    ("KL", "KL to the reference (nats per answer)", "kl_to_reference", "at most", 12.0, False),
]

# the sweep: (seed of the run, a setting as minichatgpt's flags over the run's own); "" is the default itself
SWEEP = [
    (0, ""),
    (0, "--ppo-epochs 4 --ppo-steps 55"),
    (0, "--ppo-steps 55 --lr 4e-4"),
    (0, "--ppo-steps 80"),
    (0, "--init-kl-coef 0.3"),
    (0, "--init-kl-coef 0.15"),
    (0, "--ppo-epochs 4 --ppo-steps 80 --lr 1e-4"),
    (0, "--ppo-epochs 4 --ppo-steps 80 --lr 1e-4 --adaptive-kl --target-kl 10 --horizon 640"),
    (0, "--method grpo --grpo-beta 0.1"),
    (0, "--method reinforce --reinforce-kl-coef 0.1"),
    (1, ""),
]

# toy sizes for --tiny (the same flags as tests/tiny_run.py's runs, on the corpus --corpus names)
TINY_RUN = ["--vocab-size", "300", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "32",
            "--pretrain-steps", "30", "--ppo-steps", "4", "--batch-size", "8", "--forward-batch-size", "4",
            "--mini-batch-size", "4", "--response-tokens", "6", "--eval-prompts", "3", "--checkpoint-every", "2"]
TINY = {
    "compare": ["--budget", "24", "--batch-size", "8", "--eval-prompts", "3", "--eval-every", "3"],
    "overopt": ["--proxy-sizes", "20", "40", "--prompts", "3", "--n-max", "4", "--rl-steps", "2", "--eval-every", "1"],
    "cross": ["--prompts", "3", "--n-max", "4", "--rl-steps", "2", "--eval-every", "1"],
    "sweep": ["--ppo-steps", "2"],
    "bench": ["--repeats", "1", "--warmup", "0"],
    "bench_ppo": ["--repeats", "1", "--batch-size", "8", "--mini-batch-size", "4", "--forward-batch-sizes", "4", "8",
                  "--vocab-size", "512"],
}
EXPERIMENT_FILES = ("compare", "overopt", "overopt_cross")    # what an experiment leaves in the run folder


# ------------------------------------------------------------------------------------------------ the stamp


def vector_class(flags):
    """The widest SIMD the CPU's flags name: AVX-512, AVX2, AVX, SSE2, NEON, or "unknown"."""
    for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sse2", "SSE2"),
                       ("asimd", "NEON"), ("neon", "NEON")):
        if flag in flags:
            return name
    return "unknown"


def cpu_of(cpuinfo):
    """The text of /proc/cpuinfo -> {"cpu": model name, "vector": vector class}."""
    fields = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    family = f", family {fields['cpu family']}" if "cpu family" in fields else ""
    model = fields.get("model name") or fields.get("Model") or platform.processor() or platform.machine()
    return {"cpu": model + family, "vector": vector_class(flags)}


def blas_of():
    """The BLAS NumPy calls, as threadpoolctl finds it: its library, version, kernels and threads."""
    import numpy  # noqa: F401 - threadpoolctl lists the libraries loaded in this process
    from threadpoolctl import threadpool_info
    blas = next((lib for lib in threadpool_info() if lib.get("user_api") == "blas"), {})
    return {key: blas.get(key) for key in ("internal_api", "version", "architecture", "num_threads")}


def machine():
    """What a measurement ran on, found from the machine itself."""
    import numpy as np
    try:
        cpu = cpu_of(Path("/proc/cpuinfo").read_text())
    except OSError:
        cpu = cpu_of("")
    return {**cpu, "cores": os.cpu_count(), "numpy": np.__version__, "blas": blas_of(),
            "python": platform.python_version()}


def stamp(started, load_before, seconds):
    """The stamp of one source: the machine, the date it started, the load average before and after, its seconds."""
    return {**machine(), "date": started.strftime("%Y-%m-%d %H:%M"), "load_before": round(load_before, 2),
            "load_after": round(os.getloadavg()[0], 2), "seconds": round(seconds, 1)}


def sha256(file):
    return hashlib.sha256(Path(file).read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ running commands


@dataclasses.dataclass
class Sitting:
    """Where a sitting runs its commands and writes its results, and at which sizes."""
    runs_dir: Path
    results_dir: Path
    tiny: bool = False
    corpus: str = None

    def shown(self, file):
        """A path as a command shows it: relative to the working folder where it lies below it."""
        file = Path(file).resolve()
        try:
            return str(file.relative_to(Path.cwd()))
        except ValueError:
            return str(file)

    def run(self, argv, log):
        """Run one command (argv[0]: a console script of the project, or a script under scripts/) in a fresh process;
        its output goes to the runs folder's logs/<log>.out -> (the command as a reader types it, its stdout)."""
        if argv[0].endswith(".py"):
            executable = [sys.executable, str(ROOT / argv[0])]
            typed = ["python", argv[0], *argv[1:]]
        else:
            found = Path(sys.executable).with_name(argv[0])
            found = str(found) if found.exists() else shutil.which(argv[0])
            if found is None:
                sys.exit(f"results.py: {argv[0]} is not installed; pip install -e . first")
            executable, typed = [found], list(argv)
        command = shlex.join(typed)
        print(f"+ {command}", flush=True)
        logs = self.runs_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        done = subprocess.run(executable + list(argv[1:]), capture_output=True, text=True)
        (logs / f"{log}.out").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            sys.exit(f"results.py: `{command}` failed (exit status {done.returncode}); its output is in "
                     f"{logs / (log + '.out')}:\n{done.stderr.strip()[-2000:]}")
        print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
        return command, done.stdout

    def main_job(self, *flags, name):
        """The main job's command line for the run folder `name` (toy sizes with --tiny)."""
        corpus = ["--corpus", self.corpus] if self.corpus else []
        return ["minichatgpt", *flags, "--name", name, "--runs-dir", self.shown(self.runs_dir), "--quiet",
                *(TINY_RUN if self.tiny else []), *corpus]

    def on_run(self, command, name, *flags, extra=None):
        """An experiment's or script's command line on the run folder `name`."""
        return [command, "--name", name, "--runs-dir", self.shown(self.runs_dir), *flags,
                *(TINY.get(extra, []) if self.tiny else [])]

    def folder(self, name):
        return self.runs_dir / name

    def base_run(self, seed=0):
        """The main job's run of `seed`, made if it is missing (a finished run is only checked) -> its folder."""
        name = f"seed{seed}"
        if not (self.folder(name) / "summary.json").exists():
            self.run(self.main_job("--seed", str(seed), name=name), f"{name}-base")
        return self.folder(name)


def run_entry(command, folder, manifest=None, **fields):
    """One summary: the command that made it and the sha256 of the manifest of the folder it came from."""
    return {"command": command, "manifest_sha256": sha256(manifest or Path(folder) / "manifest.json"), **fields}


def run_summary(folder):
    """What the tables read of a finished main job: its evaluation, timings and stage measurements."""
    s = json.loads((Path(folder) / "summary.json").read_text())
    keep = ("method", "reference", "policy", "ppo_steps", "timings_s", "data", "pretrain", "reward", "gold")
    return {key: s[key] for key in keep if key in s}


def printed_table(stdout):
    """The before/after table a command printed: its first run of lines that start with '|'."""
    lines, started = [], False
    for line in stdout.splitlines():
        if line.startswith("|"):
            lines.append(line)
            started = True
        elif started:
            break
    return "\n".join(lines)


def without_samples(value):
    """overopt's results without the answers kept at each point (the JSON stays small)."""
    if isinstance(value, dict):
        return {k: without_samples(v) for k, v in value.items() if not k.startswith("samples")}
    if isinstance(value, list):
        return [without_samples(v) for v in value]
    return value


def delete(*paths):
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def copy_picture(sitting, file, name):
    shutil.copyfile(file, sitting.results_dir / name)
    return name


# ------------------------------------------------------------------------------------------------ the sources


def measure_main(s):
    """The main job on each seed; seed 0's printed table and curves."""
    entries = []
    for seed in SEEDS:
        name = f"seed{seed}"
        delete(s.folder(name))
        command, stdout = s.run(s.main_job("--seed", str(seed), name=name), name)
        entries.append(run_entry(command, s.folder(name), seed=seed, printed_table=printed_table(stdout),
                                 summary=run_summary(s.folder(name))))
    return {"entries": entries, "pictures": [copy_picture(s, s.folder(BASE) / "curves.png", "curves.png")]}


def measure_quick(s):
    """minichatgpt --preset quick, into its own folder."""
    delete(s.folder("quick"))
    corpus = ["--corpus", s.corpus] if s.corpus else []
    argv = ["minichatgpt", "--preset", "quick", "--runs-dir", s.shown(s.runs_dir), "--quiet",
            *(TINY_RUN if s.tiny else []), *corpus]
    command, stdout = s.run(argv, "quick")
    return {"entries": [run_entry(command, s.folder("quick"), printed_table=printed_table(stdout),
                                  summary=run_summary(s.folder("quick")))]}


def other_methods():
    from ppo_np import METHODS
    return [m for m in METHODS if m != "ppo"]


def measure_methods(s):
    """Every other method as a job of its own, on a copy of seed 0's run (--restart ppo keeps its pretrained model,
    reward model and gold), beside seed 0's PPO."""
    base = s.base_run()
    entries = [run_entry(shlex.join(s.main_job("--seed", "0", name=BASE)), base, method="ppo",
                         summary=run_summary(base))]
    for method in other_methods():
        name = f"{BASE}-{method}"
        delete(s.folder(name))
        shutil.copytree(base, s.folder(name), ignore=shutil.ignore_patterns(".lock", *(f"{e}*" for e in
                                                                                        EXPERIMENT_FILES), "sweep*"))
        command, _ = s.run(s.main_job("--method", method, "--restart", "ppo", name=name), name)
        copied = f"cp -r {shlex.quote(s.shown(base))} {shlex.quote(s.shown(s.folder(name)))}"
        entries.append(run_entry(f"{copied} && {command}", s.folder(name), method=method,
                                 summary=run_summary(s.folder(name))))
    return {"entries": entries, "base_manifest_sha256": sha256(base / "manifest.json")}


def measure_compare(s):
    base = s.base_run()
    delete(*(base / f for f in ("compare", "compare.json", "compare.png", "compare.md")))
    command, stdout = s.run(s.on_run("minichatgpt-compare", BASE, "--quiet", extra="compare"), "compare")
    results = json.loads((base / "compare.json").read_text())
    agreement = [line for line in stdout.splitlines() if line.startswith("- ")]
    summary = {key: results[key] for key in ("settings", "reference", "reward_models")}
    summary["methods"] = {m: {k: v for k, v in r.items() if k != "curve"} for m, r in results["methods"].items()}
    return {"entries": [run_entry(command, base / "compare", printed_table=printed_table(stdout), agreement=agreement,
                                  summary=summary)],
            "base_manifest_sha256": sha256(base / "manifest.json"),
            "pictures": [copy_picture(s, base / "compare.png", "compare.png")]}


def measure_overopt(s, cross=False):
    base = s.base_run()
    name = "overopt_cross" if cross else "overopt"
    delete(*(base / f for f in (name, f"{name}.json", f"{name}.png")))
    flags = ["--cross-kind"] if cross else []
    command, _ = s.run(s.on_run("minichatgpt-overopt", BASE, *flags, "--quiet", extra="cross" if cross else "overopt"),
                       name)
    results = without_samples(json.loads((base / f"{name}.json").read_text()))
    return {"entries": [run_entry(command, base / name, summary=results)],
            "base_manifest_sha256": sha256(base / "manifest.json"),
            "pictures": [copy_picture(s, base / f"{name}.png", f"{name}.png")]}


def measure_sweep(s):
    """The sweep rows, one sweep command per seed, each measuring the reference first, on validation prompts."""
    entries = []
    for seed in sorted({seed for seed, _ in SWEEP}):
        base = s.base_run(seed)
        out = s.runs_dir / f"sweep-seed{seed}.jsonl"
        delete(out)
        settings = [text + (" " + " ".join(TINY["sweep"]) if s.tiny else "") for sd, text in SWEEP if sd == seed]
        argv = s.on_run("scripts/sweep.py", f"seed{seed}", "--eval-on", "validation", "--reference", "--out",
                        s.shown(out), "--", *settings)
        command, _ = s.run(argv, f"sweep-seed{seed}")
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        labels = ["reference", *(text for sd, text in SWEEP if sd == seed)]    # the rows come in this order
        entries += [run_entry(command, base, seed=seed, setting=label, summary=row) for label, row in zip(labels, rows)]
    return {"entries": entries, "base_manifest_sha256": sha256(s.folder(BASE) / "manifest.json")}


def measure_bench(s):
    """scripts/bench.py (NumPy against PyTorch) and scripts/bench_ppo.py (a PPO step's memory), each its last line."""
    entries = []
    for script, extra in (("scripts/bench.py", "bench"), ("scripts/bench_ppo.py", "bench_ppo")):
        command, stdout = s.run([script, *(TINY[extra] if s.tiny else [])], extra)
        entries.append({"command": command, "manifest_sha256": None, "kind": "benchmark", "script": script,
                        "summary": json.loads(stdout.strip().splitlines()[-1])})
    return {"entries": entries}


@dataclasses.dataclass(frozen=True)
class Source:
    what: str
    minutes: float          # about how long it takes on an idle 2-core machine
    measure: object


SOURCES = {
    "main": Source("the main job on seeds 0, 1 and 2", 11, measure_main),
    "quick": Source("minichatgpt --preset quick", 1, measure_quick),
    "methods": Source("each other method as a job of its own, on a copy of seed 0's run", 8, measure_methods),
    "compare": Source("minichatgpt-compare on seed 0's run", 12, measure_compare),
    "overopt": Source("minichatgpt-overopt on seed 0's run", 6, lambda s: measure_overopt(s)),
    "cross": Source("minichatgpt-overopt --cross-kind on seed 0's run", 7, lambda s: measure_overopt(s, cross=True)),
    "sweep": Source("the sweep rows on validation prompts", 10, measure_sweep),
    "bench": Source("scripts/bench.py and scripts/bench_ppo.py", 5, measure_bench),
}


def measure(sitting, names):
    """Measure each named source, in SOURCES' order, and write its JSON."""
    sitting.results_dir.mkdir(parents=True, exist_ok=True)
    for name in [n for n in SOURCES if n in names]:
        print(f"== {name}: {SOURCES[name].what}", flush=True)
        for old in json_of(sitting.results_dir, name).get("pictures", []):
            delete(sitting.results_dir / old)
        started, load, t0 = datetime.datetime.now(), os.getloadavg()[0], time.perf_counter()
        result = SOURCES[name].measure(sitting)
        only = " --only " + name if set(names) != set(SOURCES) else ""
        record = {"source": name, "measured_by": f"python scripts/results.py measure{only}"
                  + (" --tiny" if sitting.tiny else ""),
                  "stamp": stamp(started, load, time.perf_counter() - t0), **result}
        (sitting.results_dir / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
        print(f"   wrote {sitting.results_dir / (name + '.json')} ({record['stamp']['seconds']:.0f} s)", flush=True)


# ------------------------------------------------------------------------------------------------ checking the JSON


STAMP_KEYS = ("cpu", "vector", "cores", "numpy", "blas", "date", "load_before", "load_after", "seconds")


def json_of(results_dir, source):
    file = Path(results_dir) / f"{source}.json"
    return json.loads(file.read_text()) if file.exists() else {}


def json_problems(results_dir):
    """What a results folder holds that `measure` would not have written -> list of messages."""
    results_dir, problems = Path(results_dir), []
    pictures = set()
    for file in sorted(results_dir.glob("*.json")):
        name = file.stem
        data = json.loads(file.read_text())
        if name not in SOURCES or data.get("source") != name:
            problems.append(f"{file.name}: not a source of scripts/results.py ({', '.join(SOURCES)})")
            continue
        missing = [k for k in STAMP_KEYS if k not in data.get("stamp", {})]
        if missing:
            problems.append(f"{file.name}: its stamp lacks {', '.join(missing)}")
        if not data.get("measured_by", "").startswith("python scripts/results.py measure"):
            problems.append(f"{file.name}: no measured_by command")
        if not data.get("entries"):
            problems.append(f"{file.name}: no entries")
        for i, entry in enumerate(data.get("entries", [])):
            if not entry.get("command"):
                problems.append(f"{file.name}: entry {i} has no command")
            benchmark = entry.get("kind") == "benchmark"
            if not benchmark and not re.fullmatch(r"[0-9a-f]{64}", str(entry.get("manifest_sha256"))):
                problems.append(f"{file.name}: entry {i} has no manifest sha256")
            if "summary" not in entry:
                problems.append(f"{file.name}: entry {i} has no summary")
        pictures.update(data.get("pictures", []))
    for file in sorted(results_dir.iterdir()) if results_dir.exists() else []:
        if file.suffix != ".json" and file.name not in pictures:
            problems.append(f"{file.name}: no source lists it; only scripts/results.py measure writes this folder")
    return problems


def sitting_problems(results_dir):
    """Results built on seed 0's run that name another run than the one main.json measured -> messages."""
    main = json_of(results_dir, "main")
    if not main:
        return []
    base = next(e["manifest_sha256"] for e in main["entries"] if e.get("seed") == 0)
    return [f"{name}.json was measured on another seed-0 run than main.json's; measure it again"
            for name in SOURCES if json_of(results_dir, name).get("base_manifest_sha256") not in (None, base)]


# ------------------------------------------------------------------------------------------------ the tables


def table(header, rows):
    """A Markdown table: the first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def misses(policy, reference):
    """The targets a policy misses -> "none" or their names."""
    missed = []
    for name, _, metric, sense, bound, relative in TARGETS:
        limit = bound * reference[metric] if relative else bound
        value = policy[metric]
        if (value < limit) if sense == "at least" else (value > limit):
            missed.append(name)
    return ", ".join(missed) or "none"


def judged(m, reference=None):
    """The cells every frontier table shows of one policy (and what it misses, given its reference)."""
    cells = [f"{m['reward_positive']:.3f}", f"{m['gold_positive']:.3f}",
             f"{m['lexicon_positive']:.3f} / {m['lexicon_negative']:.3f}", f"{m['kl_to_reference']:.2f}",
             f"{m['top_word']} {m['top_word_share']:.3f}", f"{m['unique_share']:.3f}", f"{m['response_tokens']:.1f}"]
    return cells + ([misses(m, reference)] if reference is not None else [])


JUDGED = ["proxy positive", "gold positive", "lexicon pos / neg", "KL", "top word", "unique", "length"]


def seed0(data):
    return next(e for e in data["main"]["entries"] if e.get("seed") == 0)


def main_table(data, doc):
    return seed0(data)["printed_table"]


SPREAD = [("reward model: positive", "reward_positive", "{:.3f}"), ("gold scorer: positive", "gold_positive", "{:.3f}"),
          ("lexicon: positive", "lexicon_positive", "{:.3f}"), ("lexicon: negative", "lexicon_negative", "{:.3f}"),
          ("KL to reference (nats/response)", "kl_to_reference", "{:.2f}"),
          ("responses with the top word", "top_word_share", "{:.3f}"), ("unique responses", "unique_share", "{:.3f}"),
          ("response length (tokens)", "response_tokens", "{:.1f}")]


def seeds_table(data, doc):
    """The mean and the range over the seeds, of the reference and of the policy."""
    runs = [e["summary"] for e in data["main"]["entries"]]

    def cell(model, key, fmt):
        values = [r[model][key] for r in runs]
        return f"{fmt.format(sum(values) / len(values))} ({fmt.format(min(values))} to {fmt.format(max(values))})"

    seeds = ", ".join(str(e["seed"]) for e in data["main"]["entries"])
    header = [f"held-out prompts (n={runs[0]['policy']['n']}), seeds {seeds}", "reference: mean (range)",
              "policy: mean (range)"]
    return table(header, [[label, cell("reference", key, fmt), cell("policy", key, fmt)] for label, key, fmt in SPREAD])


def per_seed_table(data, doc):
    rows = []
    for e in data["main"]["entries"]:
        r, p = e["summary"]["reference"], e["summary"]["policy"]
        rows.append([str(e["seed"]), *judged(p, r)[:6], f"{p['response_tokens']:.1f} ({r['response_tokens']:.1f})",
                     misses(p, r)])
    return table(["seed", *JUDGED[:6], "length (reference's)", "misses"], rows)


def targets_table(data, doc):
    rows = [[name, what, f"{sense} {bound:g}" + (" of the reference's" if relative else "")]
            for name, what, _, sense, bound, relative in TARGETS]
    return table(["target", "what", "bound"], rows)


def sweep_table(data, doc):
    entries = data["sweep"]["entries"]
    reference = {e["seed"]: e["summary"] for e in entries if e["setting"] == "reference"}
    rows = []
    for e in entries:
        setting = e["setting"]
        label = {"reference": "the reference (no RL)", "": "the default"}.get(setting, f"`{setting}`")
        rows.append([str(e["seed"]), label, *judged(e["summary"], None if setting == "reference"
                                                    else reference[e["seed"]])])
        if setting == "reference":
            rows[-1].append("")
    return table(["seed", "setting", *JUDGED, "misses"], rows)


def methods_table(data, doc):
    entries = data["methods"]["entries"]
    reference = entries[0]["summary"]["reference"]
    rows = [[e["method"].upper(), *judged(e["summary"]["policy"], reference)] for e in entries]
    rows.append(["reference", *judged(reference), ""])
    return table(["method", *JUDGED, "misses"], rows)


def compare_table(data, doc):
    entry = data["compare"]["entries"][0]
    return entry["printed_table"] + "\n\n" + "\n".join(entry["agreement"])


def scorers_table(results):
    from_kind = {"ngram": "n-gram", "gpt": "GPT reward model", "lexicon": "lexicon"}
    rows = [[name, from_kind.get(s.get("kind"), s.get("kind", "")), f"{s['train_snippets']:,}",
             f"{s['test_accuracy']:.3f}"] for name, s in results["scorers"].items()]
    return table(["scorer", "kind", "training snippets", "test accuracy"], rows)


def curve_points(rows, kind):
    """The points a curve table shows: best-of-n's largest n; an RL curve's middle step, its lexicon's peak and its
    last step."""
    if kind == "best_of_n":
        return [rows[-1]]
    peak = max(rows, key=lambda r: r["lexicon_positive"])
    middle = rows[len(rows) // 2]
    return sorted({id(r): r for r in (middle, peak, rows[-1])}.values(), key=lambda r: r["step"])


def curves_table(results):
    """Each curve's gains over its own first point, at the points curve_points picks."""
    rows = []
    for kind, title in (("best_of_n", "best-of-{}"), ("rl", "PPO, step {}")):
        for proxy in dict.fromkeys(r["proxy"] for r in results[kind]):
            curve = [r for r in results[kind] if r["proxy"] == proxy]
            first = curve[0]
            for r in curve_points(curve, kind):
                at = r["n"] if kind == "best_of_n" else r["step"]
                rows.append([title.format(at), proxy, r.get("gold", "gold"), f"{r['kl']:.1f}",
                             f"{r['proxy_score'] - first['proxy_score']:+.2f}",
                             f"{r['gold_score'] - first['gold_score']:+.2f}", f"{r['gold_positive']:.3f}",
                             f"{r['lexicon_positive']:.3f} / {r['lexicon_negative']:.3f}",
                             "" if r.get("top_word_share") is None else f"{r['top_word_share']:.3f}"])
    return table(["point", "proxy", "judged by", "KL (nats)", "proxy gain", "gold gain", "gold positive",
                  "lexicon pos / neg", "top word share"], rows)


def turns_table(results):
    rows = [[d["kind"].replace("best_of_n", "best-of-n").replace("rl", "PPO"), d["proxy"], d["judge"],
             f"{d['peak']['share']:.3f} at {d['peak']['at']} (KL {d['peak']['kl']:.1f})",
             f"{d['last']['share']:.3f} at {d['last']['at']} (KL {d['last']['kl']:.1f})", f"{d['drop']:+.3f}",
             f"{2 * d['se']:.3f}", "yes" if d["turns_down"] else "no"] for d in results["downturns"]]
    return table(["curve", "proxy", "judge", "peak", "last point", "drop", "2 s.e.", "turns down"], rows)


def experiment(source, shown):
    return lambda data, doc: shown(data[source]["entries"][0]["summary"])


BENCH_ROWS = [("pretraining step as the pipeline takes it", "pipeline", "pipeline_ms_numpy", "pipeline_ms_torch"),
              ("training step, 4 x 4 x 128, vocab 2048, batch 32 x 64", "default", "train_ms_numpy", "train_ms_torch"),
              ("training step, 6 x 6 x 192, block 128, batch 16", "large", "train_large_ms_numpy",
               "train_large_ms_torch")]


def bench_table(data, doc):
    b = data["bench"]["entries"][0]["summary"]
    rows = [[label, f"{b[numpy]:.1f}", f"{b[size + '_ms_products']:.1f}", f"{b[torch]:.1f}",
             f"{b[numpy] / b[torch]:.2f}", f"{b[size + '_fraction_of_peak_numpy']:.1%}",
             f"{b[size + '_fraction_of_peak_products']:.1%}"] for label, size, numpy, torch in BENCH_ROWS]
    rows.append(["64 new tokens, batch 8: KV cache / recomputing (NumPy)", f"{b['generate_kv_ms']:.1f}", "",
                 f"{b['generate_recompute_ms']:.1f}", f"{b['kv_cache_speedup']:.1f}x faster", "", ""])
    return (table(["case", "NumPy (ms)", "its products alone (ms)", "PyTorch (ms)", "ratio", "NumPy, of peak",
                   "products alone, of peak"], rows)
            + f"\n\nBLAS peak: {b['blas_peak_gflops']:.1f} GFLOP/s (one float32 2048 x 2048 x 2048 product); "
              f"{b['threads']} threads; median of {b['repeats']} interleaved repeats.")


def bench_ppo_table(data, doc):
    rows = [[str(r["forward_batch_size"]), f"{r['step_ms']:.0f}", f"{r['forward_pass_peak_mb']:.1f}",
             f"{r['step_peak_mb']:.1f}"] for r in data["bench"]["entries"][1]["summary"]["ppo_step"]]
    return table(["forward_batch_size", "PPO step (ms)", "peak memory of the no-grad pass (MB)",
                  "peak of the whole step (MB)"], rows)


STAGES = [("corpus and tokenizer", "data_and_tokenizer"), ("pretraining", "pretrain"),
          ("reward model and gold scorer", "reward"), ("the RL stage", "ppo"), ("evaluation", "evaluate"),
          ("total", "total")]


def stages_table(data, doc):
    runs = [(f"seed {e['seed']}", e["summary"]) for e in data["main"]["entries"]]
    rows = [[label, *(f"{s['timings_s'][key]:.0f}" for _, s in runs)] for label, key in STAGES]
    rows.append(["pretraining tokens/s", *(f"{s['pretrain']['tokens_per_s']:,.0f}" for _, s in runs)])
    return table(["stage (seconds)", *(name for name, _ in runs)], rows)


def quick_table(data, doc):
    s = data["quick"]["entries"][0]["summary"]
    r, p = s["reference"], s["policy"]
    rows = [["gold scorer: positive", f"{r['gold_positive']:.3f}", f"{p['gold_positive']:.3f}"],
            ["lexicon (VADER): positive / negative", f"{r['lexicon_positive']:.3f} / {r['lexicon_negative']:.3f}",
             f"{p['lexicon_positive']:.3f} / {p['lexicon_negative']:.3f}"],
            ["KL to reference (nats/response)", f"{r['kl_to_reference']:.2f}", f"{p['kl_to_reference']:.2f}"],
            ["responses with the top word", f"{r['top_word_share']:.3f}", f"{p['top_word_share']:.3f}"],
            ["unique responses", f"{r['unique_share']:.3f}", f"{p['unique_share']:.3f}"]]
    return table([f"held-out prompts (n={p['n']})", "reference", "policy"], rows)


def sitting_table(data, doc):
    rows, total = [], 0.0
    for name, source in SOURCES.items():
        if name not in data:
            rows.append([name, source.what, "not measured yet", "", ""])
            continue
        st = data[name]["stamp"]
        total += st["seconds"]
        rows.append([name, source.what, st["date"], f"{st['seconds'] / 60:.1f}",
                     f"{st['load_before']:.2f} / {st['load_after']:.2f}"])
    rows.append(["all", "", "", f"{total / 60:.1f}", ""])
    if not data:
        return table(["source", "what", "measured", "minutes", "load average before / after"], rows)
    machines = {machine_line(d["stamp"]) for d in data.values()}
    said = ("every source on one machine: " + machines.pop() if len(machines) == 1
            else "on more than one machine: " + "; ".join(sorted(machines)))
    return table(["source", "what", "measured", "minutes", "load average before / after"], rows) + f"\n\n{said}."


def picture(file, alt):
    """A picture measure copied beside the JSON, linked from README.md or from a document in docs/."""
    return lambda data, doc: f"![{alt}]({'docs/' if doc.name == 'README.md' else ''}results/{file})"


# NAME -> (the sources it reads, how it is written from their JSON and the document's path)
TABLES = {
    "quick": (("quick",), quick_table),
    "main": (("main",), main_table),
    "seeds": (("main",), seeds_table),
    "curves": (("main",), picture("curves.png", "proxy and gold reward, KL, kl_coef, top-word and unique "
                                  "shares, length, entropy, value loss and clipfrac over the PPO steps of seed 0")),
    "per_seed": (("main",), per_seed_table),
    "targets": ((), targets_table),
    "sweep": (("sweep",), sweep_table),
    "methods": (("methods",), methods_table),
    "compare": (("compare",), compare_table),
    "compare_plot": (("compare",), picture("compare.png", "proxy reward against generated samples, and "
                                           "gold gain against sqrt(KL), per method")),
    "overopt_scorers": (("overopt",), experiment("overopt", scorers_table)),
    "overopt_curves": (("overopt",), experiment("overopt", curves_table)),
    "overopt_turns": (("overopt",), experiment("overopt", turns_table)),
    "overopt_plot": (("overopt",), picture("overopt.png", "gold (solid) and proxy (dashed) score gains "
                                           "against sqrt(KL), best-of-n and PPO")),
    "cross_scorers": (("cross",), experiment("cross", scorers_table)),
    "cross_curves": (("cross",), experiment("cross", curves_table)),
    "cross_turns": (("cross",), experiment("cross", turns_table)),
    "cross_plot": (("cross",), picture("overopt_cross.png", "cross-kind over-optimisation: each gold of the "
                                       "other kind (solid) and the proxy (dashed) against sqrt(KL)")),
    "bench": (("bench",), bench_table),
    "bench_ppo": (("bench",), bench_ppo_table),
    "stages": (("main",), stages_table),
    "sitting": ((), sitting_table),
}


def machine_line(st):
    blas = st["blas"]
    kernels = f", {blas['architecture']} kernels" if blas.get("architecture") else ""
    return (f"{st['cpu']} ({st['vector']}, {st['cores']} cores); NumPy {st['numpy']}; "
            f"{blas.get('internal_api') or 'an unknown BLAS'} {blas.get('version') or ''}{kernels}".replace(" ;", ";")
            .rstrip())


def stamp_line(data):
    st = data["stamp"]
    return (f"*Measured {st['date']} by `{data['measured_by']}` ({st['seconds'] / 60:.1f} min, load average "
            f"{st['load_before']:.2f} before, {st['load_after']:.2f} after): {machine_line(st)}.*")


MARKER = re.compile(r"<!-- results:(\w+) -->\n(.*?)<!-- /results:(\w+) -->", re.S)


def rendered(name, data, doc):
    """The text between the markers of table NAME in the document `doc`, from the loaded JSON {source: data}."""
    sources, write = TABLES[name]
    missing = [s for s in sources if s not in data]
    if missing:
        return "*Not measured yet: " + "; ".join(f"`python scripts/results.py measure --only {s}`" for s in missing) \
               + " writes this.*\n"
    text = write(data, doc)
    stamps = [stamp_line(data[s]) for s in sources if not text.startswith("![")]
    return "\n\n".join([text, *stamps]) + "\n"


def documents(root):
    root = Path(root)
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def load(results_dir):
    return {name: json_of(results_dir, name) for name in SOURCES if (Path(results_dir) / f"{name}.json").exists()}


def render_text(text, data, doc):
    """A document's text with every marked table written again -> (text, problems)."""
    problems = []

    def replace(m):
        name, closing = m.group(1), m.group(3)
        if name != closing or name not in TABLES:
            problems.append(f"{doc.name}: marker {name!r} " + ("is closed by " + closing if name != closing
                                                             else f"is no table of scripts/results.py"))
            return m.group(0)
        return f"<!-- results:{name} -->\n{rendered(name, data, doc)}<!-- /results:{name} -->"

    return MARKER.sub(replace, text), problems


def table_problems(root=ROOT, results_dir=RESULTS):
    """Every marked table of README.md and docs/*.md that is not what `render` writes -> list of messages."""
    data, problems = load(results_dir), []
    for doc in documents(root):
        text = doc.read_text(encoding="utf-8")
        new, found = render_text(text, data, doc)
        problems += found
        if text.count("<!-- results:") != len(MARKER.findall(text)):
            problems.append(f"{doc.name}: a results marker without its closing marker")
        for (name, old, _), (_, want, _) in zip(MARKER.findall(text), MARKER.findall(new)):
            if old != want:
                problems.append(f"{doc.relative_to(root)}: the table {name} is not what `python scripts/results.py "
                                f"render` writes from docs/results; run it (tables are never edited by hand)")
    return problems


def render(root=ROOT, results_dir=RESULTS):
    """Write every marked table of README.md and docs/*.md from the JSON -> the documents changed."""
    data, changed = load(results_dir), []
    for doc in documents(root):
        text = doc.read_text(encoding="utf-8")
        new, problems = render_text(text, data, doc)
        if problems:
            sys.exit("results.py: " + "; ".join(problems))
        if new != text:
            doc.write_text(new, encoding="utf-8")
            changed.append(doc)
    return changed


# ------------------------------------------------------------------------------------------------ the command line


def main(argv=None):
    p = argparse.ArgumentParser(prog="results.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, what in (("list", "the sources, what each runs and about how long it takes"),
                       ("measure", "run the sources into --runs-dir, write their JSON into --results-dir, then render"),
                       ("render", "write every marked table of README.md and docs/*.md from docs/results")):
        sub.add_parser(name, help=what, description=what[0].upper() + what[1:] + ".")
    m = sub.choices["measure"]
    m.add_argument("--only", nargs="+", choices=list(SOURCES), metavar="SOURCE",
                   help=f"these sources only, of {', '.join(SOURCES)} (default: all)")
    m.add_argument("--runs-dir", default="runs/results", help="where the runs go (default: runs/results)")
    m.add_argument("--results-dir", default=None, help="where the JSON goes (default: docs/results)")
    m.add_argument("--tiny", action="store_true", help="toy sizes, to test this command; needs another --results-dir")
    m.add_argument("--corpus", default=None, help="the main job's --corpus (default: its own)")
    args = p.parse_args(argv)
    if args.command == "list":
        for name, source in SOURCES.items():
            print(f"{name:8s} about {source.minutes:4.0f} min  {source.what}")
        print(f"{'all':8s} about {sum(s.minutes for s in SOURCES.values()):4.0f} min")
        return
    if args.command == "render":
        for doc in render():
            print(f"wrote {doc.relative_to(ROOT)}")
        return
    results_dir = Path(args.results_dir).resolve() if args.results_dir else RESULTS
    if args.tiny and results_dir == RESULTS:
        p.error("--tiny writes toy numbers: give a --results-dir other than docs/results")
    sitting = Sitting(Path(args.runs_dir).resolve(), results_dir, args.tiny, args.corpus)
    measure(sitting, args.only or list(SOURCES))
    problems = sitting_problems(results_dir)
    if problems:
        print("\n".join(problems))
    if results_dir == RESULTS:
        for doc in render():
            print(f"wrote {doc.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
