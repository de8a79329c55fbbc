"""Every measured table of the docs is what `python scripts/results.py render` writes from docs/results, and every
JSON there carries what `measure` stamps it with: the machine, the commands, the manifest hashes.

A table is never edited by hand: README.md and docs/*.md hold each one between `<!-- results:NAME -->` markers, and
the check below renders it again from the JSON and compares. The negative controls edit one number of a rendered
table, drop a stamp, and name a table that does not exist; each must be reported. `measure --tiny` runs one source
for real, at toy sizes, through the same code a sitting runs.
"""
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_run import fixture_corpus

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("results", ROOT / "scripts" / "results.py")
results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results)

RESTS_ON = re.compile(r"<!-- rests on: ([\w, ]+) -->")


def docs_copy(tmp_path):
    """README.md and docs/*.md copied under tmp_path, as render finds them."""
    (tmp_path / "docs").mkdir()
    shutil.copyfile(ROOT / "README.md", tmp_path / "README.md")
    for doc in (ROOT / "docs").glob("*.md"):
        shutil.copyfile(doc, tmp_path / "docs" / doc.name)
    return tmp_path


def test_every_marked_table_is_what_render_writes_from_the_json():
    problems = results.table_problems()
    assert not problems, "\n".join(problems)


def test_the_docs_hold_every_table_and_every_table_its_markers():
    """Each table of scripts/results.py stands in some document (so none is measured for nothing), each once."""
    found = [name for doc in results.documents(ROOT) for name, _, _ in results.MARKER.findall(doc.read_text())]
    assert sorted(found) == sorted(results.TABLES), (sorted(found), sorted(results.TABLES))


def test_every_results_json_has_its_stamp_commands_and_manifest_hashes():
    problems = results.json_problems(results.RESULTS) + results.sitting_problems(results.RESULTS)
    assert not problems, "\n".join(problems)


def test_every_shape_claim_names_tables_that_exist():
    """`<!-- rests on: NAME -->` beside a claim names the tables a new sitting must check it against."""
    named = {doc.name: [n.strip() for m in RESTS_ON.findall(doc.read_text()) for n in m.split(",")]
             for doc in results.documents(ROOT)}
    unknown = {doc: [n for n in names if n not in results.TABLES] for doc, names in named.items()}
    assert not any(unknown.values()), unknown
    assert sum(map(len, named.values())) >= 20, named


def gains_without_collapse(summary):
    """The policy is more positive than the reference to the gold and to the lexicon, and its answers stay varied."""
    r, p = summary["reference"], summary["policy"]
    return (p["gold_positive"] > r["gold_positive"] and p["lexicon_positive"] > r["lexicon_positive"]
            and p["unique_share"] >= 0.95 and p["top_word_share"] <= 0.40)


# claims of the README that code can check on the measured JSON: (source, the claim, its check)
CLAIMS = [
    ("quick", "the quick run's policy gains on the gold and on the lexicon without collapsing",
     lambda d: gains_without_collapse(d["quick"]["entries"][0]["summary"])),
    ("main", "all three judges find the policy's answers more positive than the reference's, on every seed, and the "
             "answers stay distinct from one another",
     lambda d: all(e["summary"]["policy"][k] > e["summary"]["reference"][k] and e["summary"]["policy"]["unique_share"]
                   >= 0.95 for e in d["main"]["entries"] for k in ("reward_positive", "gold_positive",
                                                                       "lexicon_positive"))),
]


def test_the_readmes_claims_hold_on_the_measured_tables():
    data = results.load(results.RESULTS)
    checked = [(claim, check(data)) for source, claim, check in CLAIMS if source in data]
    assert checked, "no source of a checked claim is measured"
    failed = [claim for claim, holds in checked if not holds]
    assert not failed, f"claims the measured tables no longer support; change the prose, then this list: {failed}"


def test_a_claim_fails_on_a_policy_that_gained_nothing():
    """Negative control: the quick run's JSON with the policy's gold share set back to the reference's."""
    data = json.loads((results.RESULTS / "quick.json").read_text())
    summary = data["entries"][0]["summary"]
    assert gains_without_collapse(summary)
    summary["policy"]["gold_positive"] = summary["reference"]["gold_positive"]
    assert not CLAIMS[0][2]({"quick": data})


def test_the_check_catches_a_table_edited_by_hand(tmp_path):
    """Negative control: one digit of a rendered table changed in a copy of the docs is reported, by name."""
    root = docs_copy(tmp_path)
    data = {"quick": json.loads((results.RESULTS / "quick.json").read_text())}
    readme = root / "README.md"
    text = readme.read_text()
    block = re.search(r"<!-- results:quick -->\n(.*?)<!-- /results:quick -->", text, re.S).group(1)
    assert block == results.rendered("quick", data, readme), "the quick table is not rendered"
    edited = re.sub(r"\| (\d)\.(\d)(\d\d) \|", lambda m: f"| {m.group(1)}.{(int(m.group(2)) + 1) % 10}{m.group(3)} |",
                    block, count=1)
    assert edited != block
    readme.write_text(text.replace(block, edited))
    problems = results.table_problems(root, results.RESULTS)
    print("\n".join(problems))
    assert len(problems) == 1 and "README.md: the table quick is not what" in problems[0], problems


def test_the_check_catches_an_unknown_table_and_an_unclosed_marker(tmp_path):
    root = docs_copy(tmp_path)
    (root / "docs" / "extra.md").write_text("# x\n\n<!-- results:nothing -->\nx\n<!-- /results:nothing -->\n\n"
                                            "<!-- results:main -->\nleft open\n")
    problems = results.table_problems(root, results.RESULTS)
    print("\n".join(problems))
    assert any("extra.md: marker 'nothing' is no table" in p for p in problems), problems
    assert any("extra.md: a results marker without its closing marker" in p for p in problems), problems


def test_the_json_check_catches_a_missing_stamp_command_and_hash(tmp_path):
    """Negative control: quick.json with its stamp's CPU, its command and its manifest hash removed, and a file no
    source lists."""
    data = json.loads((results.RESULTS / "quick.json").read_text())
    del data["stamp"]["cpu"]
    data["entries"][0]["command"] = ""
    data["entries"][0]["manifest_sha256"] = None
    (tmp_path / "quick.json").write_text(json.dumps(data))
    (tmp_path / "by_hand.png").write_bytes(b"")
    problems = results.json_problems(tmp_path)
    print("\n".join(problems))
    assert problems == ["quick.json: its stamp lacks cpu", "quick.json: entry 0 has no command",
                        "quick.json: entry 0 has no manifest sha256",
                        "by_hand.png: no source lists it; only scripts/results.py measure writes this folder"]


def test_a_result_measured_on_another_seed_0_run_is_reported(tmp_path):
    (tmp_path / "main.json").write_text(json.dumps({"entries": [{"seed": 0, "manifest_sha256": "a" * 64}]}))
    (tmp_path / "compare.json").write_text(json.dumps({"base_manifest_sha256": "b" * 64}))
    (tmp_path / "overopt.json").write_text(json.dumps({"base_manifest_sha256": "a" * 64}))
    assert results.sitting_problems(tmp_path) == ["compare.json was measured on another seed-0 run than main.json's; "
                                                  "measure it again"]


def test_the_stamp_names_the_cpu_and_its_vector_class():
    avx512 = "processor\t: 0\nmodel name\t: AMD EPYC 9R14\ncpu family\t: 25\nflags\t\t: fpu sse2 avx avx2 avx512f\n"
    assert results.cpu_of(avx512) == {"cpu": "AMD EPYC 9R14, family 25", "vector": "AVX-512"}
    assert results.cpu_of(avx512.replace(" avx512f", ""))["vector"] == "AVX2"
    assert results.cpu_of("Features\t: fp asimd\nModel\t: Raspberry Pi 4\n")["vector"] == "NEON"
    stamp = results.stamp(results.datetime.datetime(2026, 1, 2, 3, 4), 0.5, 61.0)
    assert set(results.STAMP_KEYS) <= set(stamp) and stamp["date"] == "2026-01-02 03:04"
    assert stamp["blas"]["internal_api"], stamp["blas"]          # threadpoolctl finds NumPy's BLAS


def test_a_policy_misses_the_targets_it_misses():
    reference = {"response_tokens": 12.0}
    good = {"lexicon_positive": 0.9, "lexicon_negative": 0.04, "top_word_share": 0.3, "unique_share": 0.99,
            "response_tokens": 10.0, "kl_to_reference": 11.0}
    assert results.misses(good, reference) == "none"
    bad = {**good, "lexicon_negative": 0.06, "response_tokens": 8.9, "kl_to_reference": 12.5}
    assert results.misses(bad, reference) == "lex-, len, KL"


def test_measure_tiny_runs_the_quick_preset_and_its_json_renders(tmp_path):
    """The quick source measured for real at toy sizes: a fresh process runs `minichatgpt --preset quick` into its
    own folder, and the JSON it leaves passes the checks and renders the README's table."""
    corpus = fixture_corpus(tmp_path / "reviews.csv")
    out = tmp_path / "results"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "results.py"), "measure", "--tiny", "--only",
                           "quick", "--corpus", str(corpus), "--runs-dir", str(tmp_path / "runs"), "--results-dir",
                           str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "runs" / "quick" / "summary.json").exists()       # --preset quick names its own folder
    assert results.json_problems(out) == []
    data = json.loads((out / "quick.json").read_text())
    assert data["measured_by"] == "python scripts/results.py measure --only quick --tiny"
    assert data["entries"][0]["command"].startswith("minichatgpt --preset quick --runs-dir")
    table = results.rendered("quick", {"quick": data}, ROOT / "README.md")
    assert table.startswith("| held-out prompts (n=3) | reference | policy |"), table


def test_measure_tiny_refuses_to_write_into_docs_results():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "results.py"), "measure", "--tiny"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "--tiny writes toy numbers" in done.stderr, done.stderr


@pytest.mark.parametrize("name", sorted(name for name, (sources, _) in results.TABLES.items() if sources))
def test_a_table_of_a_source_not_measured_says_so(name, tmp_path):
    sources, _ = results.TABLES[name]
    text = results.rendered(name, {}, tmp_path / "README.md")
    assert text.startswith("*Not measured yet:") and f"--only {sources[0]}" in text, text


def test_the_readme_with_every_table_rendered_is_at_most_250_lines():
    """The README's tables at their full size: the quick run's JSON stands in for each seed of the main job (the same
    printed table, the same rows)."""
    quick = json.loads((results.RESULTS / "quick.json").read_text())
    main = {**quick, "source": "main", "entries": [{**quick["entries"][0], "seed": seed} for seed in results.SEEDS]}
    readme = ROOT / "README.md"
    text, problems = results.render_text(readme.read_text(encoding="utf-8"), {"quick": quick, "main": main}, readme)
    assert not problems and "Not measured yet" not in text
    assert text.count("\n") <= 250, text.count("\n")
