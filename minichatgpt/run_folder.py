"""The run folder runs/<name>/: what each stage writes there, and the JSON files beside the .npz ones.

Every file goes through `minigpt_np.checkpoint.atomic_write`, the logs included: the PPO log is rewritten
whole after each step (a few dozen lines), so a kill at any moment leaves it complete up to some step.
"""
import json
import os

from minigpt_np.checkpoint import atomic_write
from minigpt_np.resume import sha256_of_file

def path(run_dir, name):
    return os.path.join(run_dir, name)


def write_json(file, obj):
    with atomic_write(file, "w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.write("\n")


def read_json(file):
    with open(file) as f:
        return json.load(f)


def write_jsonl(file, records):
    with atomic_write(file, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


class DamagedFile(ValueError):
    """A file of the run folder is missing, unreadable or shorter than its checkpoint says."""


def read_jsonl(file, expect=None):
    """The records of a JSON-lines file -> list of dicts; its first `expect` ones if given.

    A missing file, an unreadable line or fewer than `expect` lines raise DamagedFile naming the file.
    """
    if not os.path.isfile(file):
        raise DamagedFile(f"{file} is missing")
    records = []
    with open(file) as f:
        for number, line in enumerate(f, start=1):
            if expect is not None and len(records) == expect:
                break
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise DamagedFile(f"{file}, line {number}: not a JSON record (the file is damaged)") from None
    if expect is not None and len(records) < expect:
        raise DamagedFile(f"{file} holds {len(records)} records, but its checkpoint is at step {expect}: the log "
                         "was truncated or replaced")
    return records


# ---------------------------------------------------------------------------------------------- refusals


class Refused(Exception):
    """The run cannot go on as asked; the message says why and what to do. Nothing was changed."""


def check_name(name):
    """A run name is one path component: not empty, no separator, not "." or ".."."""
    seps = [s for s in (os.sep, os.altsep, "/") if s]
    if not name or name in (".", "..") or any(s in name for s in seps) or "\0" in name:
        raise ValueError(f"--name must be one folder name (letters, digits, '-', '_', '.'), not {name!r}: "
                         "the run folder is --runs-dir/--name, and nothing is written outside it")
    return name


# ---------------------------------------------------------------------------------------------- the lock


class Lock:
    """An exclusive lock on a run folder while a process works in it: `with Lock(run_dir): ...`.

    It is an flock on run_dir/.lock, which the operating system releases when the process ends, however it
    ends: the lock of a killed process is simply taken over. The file holds the owner's pid for the message.
    """

    def __init__(self, run_dir):
        self.file = os.path.join(run_dir, ".lock")
        self.fd = None

    def __enter__(self):
        import fcntl
        os.makedirs(os.path.dirname(self.file), exist_ok=True)
        fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise Refused(f"{os.path.dirname(self.file)} is in use by another minichatgpt process (pid {owner}); "
                          "wait for it to finish, or use another --name") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc):
        os.close(self.fd)     # closing the descriptor releases the flock
        self.fd = None


# ---------------------------------------------------------------------------------------------- the manifest


class Manifest:
    """manifest.json: for each stage, what it was built from (options, data, input hashes), whether it finished,
    and the hashes of what it wrote. A stage runs only on a matching record: it never mixes two runs."""

    def __init__(self, run_dir):
        self.run_dir, self.file = run_dir, os.path.join(run_dir, "manifest.json")
        try:
            self.stages = json.load(open(self.file))["stages"] if os.path.exists(self.file) else {}
        except (ValueError, KeyError, TypeError):
            raise Refused(f"{self.file} is damaged, so what this run folder holds is unknown; "
                          "use a new --name") from None

    def save(self):
        write_json(self.file, {"stages": self.stages})

    def check(self, stage, built_from, artifacts, restart_hint, partial=False):
        """Is `stage` done? Refuse if its record differs from built_from, or if its artifacts are foreign.

        -> True when it finished with this very record and its artifacts are the ones it wrote; False when it must
        run (fresh, or resuming an interrupted run of the same record). partial: compare only the keys of
        built_from (the options, before the input hashes are known) and say nothing of done.
        """
        record = self.stages.get(stage)
        present = [a for a in artifacts if os.path.exists(os.path.join(self.run_dir, a))]
        if record is None:
            if present:
                raise Refused(f"{os.path.join(self.run_dir, present[0])} was not made by this run (the manifest has "
                              f"no record of the {stage} stage); move it away, or use a new --name")
            return False
        stored = record["built_from"]
        changes = changed({k: stored.get(k) for k in built_from} if partial else stored, built_from)
        if changes:
            raise Refused(f"{self.run_dir} was built with other options or inputs for its {stage} stage: "
                          f"{'; '.join(changes)}. Use a new --name, or {restart_hint}")
        if partial or not record.get("finished"):
            return False
        self.verify(stage, restart_hint)
        return True

    def verify(self, stage, hint):
        """Refuse if a file the finished stage wrote is missing or no longer has the sha256 recorded for it."""
        for name, digest in self.stages[stage]["outputs"].items():
            file = os.path.join(self.run_dir, name)
            if not os.path.exists(file) or sha256_of_file(file) != digest:
                state = "is missing" if not os.path.exists(file) else "changed since this run wrote it"
                raise Refused(f"{file} {state}; {hint}")

    def start(self, stage, built_from):
        self.stages[stage] = {"built_from": built_from, "finished": False}
        self.save()

    def finish(self, stage, outputs):
        record = self.stages[stage]
        record.update(finished=True,
                      outputs={name: sha256_of_file(os.path.join(self.run_dir, name)) for name in outputs})
        self.save()

    def forget(self, stage, artifacts):
        """--restart: delete a stage's artifacts and its record."""
        for name in artifacts:
            file = os.path.join(self.run_dir, name)
            if os.path.exists(file):
                os.unlink(file)
        self.stages.pop(stage, None)
        self.save()


def changed(stored, current):
    """Every key whose value differs between two flat dicts -> ["--n-layer: 4 -> 6", ...]."""
    keys = sorted(set(stored) | set(current))
    return [f"{k}: {stored.get(k, '(absent)')} -> {current.get(k, '(absent)')}" for k in keys
            if stored.get(k) != current.get(k)]
