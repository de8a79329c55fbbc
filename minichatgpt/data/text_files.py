"""Labelled and unlabelled text that users bring: CSV and JSONL files with text and label columns, IMDB-style
folders of pos/ and neg/ reviews, and plain text.

Every loader returns a list of ``Snippet(text, label, movie)``: label 1 = positive, 0 = negative, None =
unlabelled (plot summaries, plain text). ``movie`` groups snippets that must stay in the same split; for data
without a movie, each snippet is its own group, named after its line ("line 12"), not after the file, so that a
renamed copy of a file is the same corpus.
"""
import csv
import io
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

LABEL_WORDS = {
    "1": 1, "pos": 1, "positive": 1, "fresh": 1, "true": 1,
    "0": 0, "neg": 0, "negative": 0, "rotten": 0, "false": 0,
}


@dataclass(frozen=True)
class Snippet:
    text: str
    label: Optional[int]  # 1 positive (fresh), 0 negative (rotten), None unlabelled (plot, plain text)
    movie: str            # split key: snippets of one movie never straddle train/val/test
    line: Optional[int] = field(default=None, compare=False)   # for a row without a movie: its line, which names it


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
    separator = next((sep for sep in ";\t|" if len(header) == 1 and sep in header[0]), None)
    if missing and separator:
        raise ValueError(f"{source}: the header is one field, {header[0]!r}: the file looks separated by "
                         f"{separator!r}, but a .csv is read with commas; save it with commas (or as .jsonl)")
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
    (``movie = "line <line>"``). Rows with empty text are skipped (logged).
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
        if key and row[key] not in (None, ""):
            snippets.append(Snippet(body, label, str(row[key])))
        else:
            snippets.append(Snippet(body, label, f"line {line}", line))
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
    paragraph (unit="paragraph"). Each is its own split group (``"line <line>"``)."""
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
    return [Snippet(s.strip(), None, f"line {k}", k) for k, s in pieces]
