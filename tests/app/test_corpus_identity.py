"""A corpus is what its rows say, wherever its file lies: a renamed copy of a file is the same corpus, and a run
recorded when a row without a movie was named after its file still opens; duplicate rows with conflicting labels
are counted and said; a corpus too small says what would do."""
import json
import logging
import shutil

from minichatgpt.commands import cli

from minichatgpt.data import corpus
from minichatgpt.settings.config import with_values
from minichatgpt.run.finished_run import FinishedRun
from tiny_run import assert_one_line_refusal, fixture_corpus, run_cli, tiny_args


def without_movies(path):
    """The fixture corpus without its movie column: every row its own group, named after its line."""
    rows = fixture_corpus(path).read_text().splitlines()
    path.write_text("\n".join(["text,label"] + [row.rsplit(",", 1)[0] for row in rows[1:]]) + "\n")
    return path


def test_a_renamed_copy_of_the_corpus_is_the_same_corpus(tmp_path, caplog):
    original = without_movies(tmp_path / "reviews.csv")
    first = cli.run_main(tiny_args(tmp_path, "x", original))
    renamed = tmp_path / "moved" / "other name.csv"
    renamed.parent.mkdir()
    shutil.move(original, renamed)
    caplog.set_level("INFO")
    again = cli.run_main(tiny_args(tmp_path, "x", renamed))
    said = [r.getMessage() for r in caplog.records]
    assert all(f"{stage}: done already" in said for stage in ("tokenizer", "pretrain", "reward", "gold", "ppo"))
    assert again["policy"] == first["policy"] and again["config"]["corpus"] == str(renamed)
    FinishedRun.open(str(tmp_path / "runs" / "x")).data      # the experiments read it from where it is now


def test_a_run_that_named_rows_after_their_file_still_opens(tmp_path):
    path = without_movies(tmp_path / "reviews.csv")
    cli.run_main(tiny_args(tmp_path, "x", path))
    snippets = corpus.load_corpus(str(path))
    named = corpus.sha256_named_by_file(snippets, "reviews.csv")
    assert named != corpus.sha256_of_snippets(snippets)
    run_dir = tmp_path / "runs" / "x"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for record in manifest["stages"].values():          # what the run recorded when rows were named after the file
        if "corpus sha256" in record["built_from"]:
            record["built_from"]["corpus sha256"] = named
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    cli.run_main(tiny_args(tmp_path, "x", path))
    assert FinishedRun.open(str(run_dir)).data[3]["corpus_sha256"] == named
    # the split is the same under either name
    split = corpus.split(snippets)
    assert [[s.movie for s in part] for part in split] == [[f"line {s.line}" for s in part] for part in split]


def test_duplicate_rows_with_conflicting_labels_are_counted_and_said(tmp_path, caplog):
    rows = fixture_corpus(tmp_path / "base.csv").read_text().splitlines()
    flipped = [row.replace(",fresh,", ",@,").replace(",rotten,", ",fresh,").replace(",@,", ",rotten,")
               for row in rows[1:4]]
    (tmp_path / "dup.csv").write_text("\n".join(rows + flipped + rows[4:6]) + "\n")
    caplog.set_level(logging.WARNING)
    *_, info = corpus.load_data(with_values({"corpus": str(tmp_path / "dup.csv")}))
    assert info["duplicates_removed"] == 5 and info["conflicting_labels"] == 3
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("3 of the duplicate rows removed had another label" in m and "first row" in m for m in warned), warned


def test_a_corpus_too_small_says_what_its_split_would_need(tmp_path, capsys):
    small = tmp_path / "small.csv"
    small.write_text("\n".join(fixture_corpus(tmp_path / "base.csv").read_text().splitlines()[:61]) + "\n")
    status, err = run_cli(capsys, tiny_args(tmp_path, "small", small))
    assert_one_line_refusal(status, err, 1, "split holds 0 labelled snippets", "about 80 or more fill every split")
    assert "at least 120" not in err
