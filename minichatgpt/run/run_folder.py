"""The run folder runs/<name>/: what each stage writes there, and the JSON files beside the .npz ones.

Every file goes through `minigpt_np.checkpoint.atomic_write`, the logs included: the PPO log is rewritten
whole after each step (a few dozen lines), so a kill at any moment leaves it complete up to some step.
atomic_write replaces a name, so it never writes through a symbolic link to a file; a linked folder would still
send the writes elsewhere, so nothing the project reads or writes in a run folder may be a link (`refuse_links`,
checked by every command that works in one).
"""
import ast
import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat

from minigpt_np.checkpoint import atomic_write
from minigpt_np.resume import sha256_of_file

NAME_MAX = 255   # bytes in one folder name on Linux, macOS and Windows file systems


def path(run_dir, name):
    return os.path.join(run_dir, name)


@contextlib.contextmanager
def writing(file):
    """Name `file` in an OSError raised without a file name (a full disk fails the write or the fsync, and says only
    "No space left on device")."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror, os.fspath(file)) from e
        raise


def write_json(file, obj):
    with writing(file), atomic_write(file, "w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.write("\n")


def read_json(file):
    with open(file) as f:
        return json.load(f)


def write_jsonl(file, records):
    with writing(file), atomic_write(file, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def sha256_of_records(records):
    """sha256 of the JSON-lines file write_jsonl makes of records (JSON reads back to the same text, so records read
    from a file hash as the file's bytes do): what a training checkpoint records of its log."""
    return hashlib.sha256("".join(json.dumps(r) + "\n" for r in records).encode()).hexdigest()


class DamagedFile(ValueError):
    """A file of the run folder is missing, unreadable or shorter than its checkpoint says."""


def read_jsonl(file, expect=None):
    """The records of a JSON-lines file -> list of dicts; its first `expect` ones if given.

    A missing file, an unreadable line or fewer than `expect` lines raise DamagedFile naming the file.
    """
    if not os.path.isfile(file):
        raise DamagedFile(f"{file} is missing")
    records = []
    with open(file, "rb") as f:
        for number, line in enumerate(f, start=1):
            if expect is not None and len(records) == expect:
                break
            try:
                records.append(json.loads(line))
            except (ValueError, UnicodeDecodeError):   # JSONDecodeError is a ValueError
                records.append(None)
            if not isinstance(records[-1], dict):
                raise DamagedFile(f"{file}, line {number}: not a JSON record (the file is damaged)")
    if expect is not None and len(records) < expect:
        raise DamagedFile(f"{file} holds {len(records)} records, but its checkpoint is at step {expect}: the log "
                         "was truncated or replaced")
    return records


# ---------------------------------------------------------------------------------------------- refusals


class Refused(Exception):
    """The run cannot go on as asked; the message says why and what to do. Nothing was changed."""


def check_name(name):
    """A run name is one folder name: printable characters (spaces and any script allowed), no path separator, not
    "." or "..", not starting with "-" (a command line would read it as an option), at most NAME_MAX bytes."""
    seps = [s for s in (os.sep, os.altsep, "/") if s]
    if not name or name in (".", "..") or name.startswith("-") or any(s in name for s in seps) \
            or not name.isprintable():
        raise ValueError(f"--name must be one folder name of printable characters, without '/', not '.' or '..', "
                         f"not starting with '-'; got {name!r}: the run folder is --runs-dir/--name, and nothing is "
                         "written outside it")
    if len(os.fsencode(name)) > NAME_MAX:
        raise ValueError(f"--name is {len(os.fsencode(name))} bytes long, but a folder name holds at most {NAME_MAX}; "
                         "use a shorter one")
    return name


def refuse_links(folder, names):
    """Refuse (Refused) a symbolic link among what the project reads and writes in a folder: the files and folders
    `names`, their temporary files (<name>.<pid>.tmp) and everything inside those folders. A linked file would be
    read as the run's own, and a linked folder would receive the run's writes wherever it points. Other entries
    (a user's own, in a shared --out-dir) are not looked at."""
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if not any(name == n or name.startswith(n + ".") for n in names):
            continue
        top = os.path.join(folder, name)
        inside = [] if os.path.islink(top) or not os.path.isdir(top) else \
            [os.path.join(root, n) for root, folders, files in os.walk(top) for n in folders + files]
        for file in (top, *inside):
            if os.path.islink(file):
                raise Refused(f"{file} is a symbolic link; a run folder holds only plain files and folders, so that "
                              "nothing is read or written through a link: put a copy of what it points to there, or "
                              "remove it")


# ---------------------------------------------------------------------------------------------- the lock


class Lock:
    """An exclusive lock on a run folder while a process works in it: `with Lock(run_dir): ...`.

    It is an flock on run_dir/.lock, which the operating system releases when the process ends, however it
    ends: the lock of a killed process is simply taken over. The file holds the owner's pid for the message. It is
    opened without following a symbolic link, and must be a plain file with no other name (a hard link), since it
    is truncated.
    """

    def __init__(self, run_dir):
        self.run_dir, self.file = run_dir, os.path.join(run_dir, ".lock")
        self.fd = None

    def __enter__(self):
        import fcntl
        os.makedirs(self.run_dir, exist_ok=True)
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise Refused(f"{self.run_dir} is in use by another minichatgpt process (pid {owner}); "
                          "wait for it to finish, or use another --name") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def _open(self):
        """The lock file's descriptor; Refused if it is a link or not a plain file of its own."""
        try:   # O_NONBLOCK: a FIFO planted as .lock must not hang the open
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            raise Refused(f"{self.file} is a symbolic link; the lock is never followed through one (it would "
                          "overwrite what the link points to): remove the link") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            what = "has another name (a hard link)" if stat.S_ISREG(st.st_mode) else "is not a plain file"
            raise Refused(f"{self.file} {what}; the lock file is overwritten, so it must be a plain file of its own: "
                          "remove it")
        return fd

    def __exit__(self, *exc):
        os.close(self.fd)     # closing the descriptor releases the flock
        self.fd = None


# ---------------------------------------------------------------------------------------------- the manifest


class Manifest:
    """manifest.json: for each stage, what it was built from (options, data, input hashes), whether it finished,
    and the hashes of what it wrote. A stage runs only on a matching record: it never mixes two runs.

    elsewhere: what a refusal advises when the folder cannot be used as it is ("use a new --name").
    """

    def __init__(self, run_dir, elsewhere="use a new --name"):
        self.run_dir, self.file, self.elsewhere = run_dir, os.path.join(run_dir, "manifest.json"), elsewhere
        self.stages = self._read() if os.path.exists(self.file) else {}

    def _read(self):
        """The stages of manifest.json -> {stage: record}; Refused naming the file if it is not what save() writes."""
        try:
            with open(self.file) as f:
                stages = json.load(f)["stages"]
            sound = isinstance(stages, dict) and all(
                isinstance(r, dict) and isinstance(r.get("built_from"), dict)
                and isinstance(r.get("finished", False), bool) and isinstance(r.get("outputs", {}), dict)
                and isinstance(r.get("metrics", {}), dict)
                and all(isinstance(d, str) for d in r.get("outputs", {}).values()) for r in stages.values())
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, IsADirectoryError):
            sound = False
        if not sound:
            raise Refused(f"{self.file} is damaged (not the record of stages this project writes), so what this "
                          f"folder holds is unknown; {self.elsewhere}")
        return stages

    def save(self):
        write_json(self.file, {"stages": self.stages})

    def check(self, stage, built_from, artifacts, advice, partial=False, changed_file=None, ignore=(), names=None,
              absent=None):
        """Is `stage` done? Refuse if its record differs from built_from, or if its artifacts are foreign.

        -> True when it finished with this very record and its artifacts are the ones it wrote; False when it must
        run (fresh, or resuming an interrupted run of the same record). The whole record is compared, both ways,
        but for the keys in `ignore` (partial: the input hashes, not known before the stages they come from have
        run; then nothing is said of done). names: {key: how a refusal names it} (a flag for a field); absent: {key:
        the value a record without the key stands for} (an option recorded by leaving it out). advice: what a
        refusal says to do ("use a new --name, or --restart ..."); changed_file: what the refusal of a changed file
        says instead, if it differs.
        """
        record = self.stages.get(stage)
        present = [a for a in artifacts if os.path.exists(os.path.join(self.run_dir, a))]
        if record is None:
            if present:
                raise Refused(f"{os.path.join(self.run_dir, present[0])} was not made by this run (the manifest has "
                              f"no record of the {stage} stage); move it away, or {self.elsewhere}")
            return False
        changes = changed({k: v for k, v in record["built_from"].items() if k not in ignore},
                          {k: v for k, v in built_from.items() if k not in ignore}, names, absent)
        if changes:
            raise Refused(f"{self.run_dir} was built with other options or inputs for its {stage} stage: "
                          f"{'; '.join(changes)}; {advice}")
        if partial or not record.get("finished"):
            return False
        self.verify(stage, changed_file or advice)
        return True

    def damaged(self, stage):
        """The files the stage recorded that are missing or no longer have their recorded sha256 -> {name: what}."""
        out = {}
        for name, digest in self.stages[stage].get("outputs", {}).items():
            file = os.path.join(self.run_dir, name)
            if not os.path.exists(file):
                out[name] = "was missing"
            elif sha256_of_file(file) != digest:
                out[name] = "had changed"
        return out

    def verify(self, stage, hint):
        """Refuse if a file the stage recorded is missing or no longer has the sha256 recorded for it."""
        for name, what in self.damaged(stage).items():
            state = "is missing" if what == "was missing" else "changed since this run wrote it"
            raise Refused(f"{os.path.join(self.run_dir, name)} {state}; {hint}")

    def start(self, stage, built_from):
        self.stages[stage] = {"built_from": built_from, "finished": False}
        self.save()

    def record(self, stage, names):
        """Record the sha256 of files the stage has finished writing (the rest of it may still be to come)."""
        outputs = self.stages[stage].setdefault("outputs", {})
        digests = {name: sha256_of_file(os.path.join(self.run_dir, name)) for name in names}
        if any(outputs.get(name) != digest for name, digest in digests.items()):
            outputs.update(digests)
            self.save()

    def finish(self, stage, outputs, metrics=None):
        """Mark the stage finished, with the sha256 of `outputs` (and of what it recorded before) and what the process
        that built it measured (`metrics`, a JSON dict: test accuracies, tokens/s, its seconds)."""
        self.stages[stage]["finished"] = True
        if metrics is not None:
            self.stages[stage]["metrics"] = metrics
        self.record(stage, outputs)
        self.save()

    def metrics(self, stage):
        """What the process that built the stage measured ({} if it recorded nothing)."""
        return self.stages.get(stage, {}).get("metrics", {})

    def forget(self, stage, artifacts):
        """--restart: delete a stage's artifacts (files or folders) and its record."""
        for name in artifacts:
            file = os.path.join(self.run_dir, name)
            if os.path.isdir(file) and not os.path.islink(file):
                shutil.rmtree(file)
            elif os.path.lexists(file):
                os.unlink(file)
        if self.stages.pop(stage, None) is not None:
            self.save()


# Settings a record may lack, and the value every record without them was built with: the kernels, recorded by the
# stages that train a GPT (and the experiments); a record made before they were recorded ran the fast ones.
RECORDED_SINCE = {"--kernels": "fast", "kernels": "fast"}


def changed(stored, current, names=None, absent=None):
    """Every key whose value differs between two flat dicts -> ["--n-layer: 4 -> 6", ...]. names: {key: how to call
    it}; absent: {key: the value a dict without the key stands for}, besides RECORDED_SINCE."""
    names, absent = names or {}, {**RECORDED_SINCE, **(absent or {})}

    def value(d, k):
        return d.get(k, absent.get(k, "(absent)"))
    return [f"{names.get(k, k)}: {value(stored, k)} -> {value(current, k)}" for k in sorted(set(stored) | set(current))
            if read_back(value(stored, k)) != read_back(value(current, k))]


def read_back(value):
    """A recorded value, a dict recorded as its text (an experiment records every setting as text) read back as the
    dict: the order of its keys is no part of what it records (a config's fields may be declared in another order)."""
    if isinstance(value, str) and value.startswith("{"):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value


ORPHAN = re.compile(r"\.\d+\.tmp$")   # atomic_write's <name>.<pid>.tmp


def remove_orphans(folder, names=None):
    """Delete the temporary files a killed process left in a folder (<name>.<pid>.tmp of atomic_write, for the names
    `names`, or any name) -> the names deleted. Only under the folder's lock: no other process writes there then."""
    removed = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        stem = ORPHAN.sub("", name)
        file = os.path.join(folder, name)
        if stem != name and (names is None or stem in names) and os.path.isfile(file) and not os.path.islink(file):
            os.unlink(file)
            removed.append(name)
    return removed
