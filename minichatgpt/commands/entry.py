"""How a command-line entry point ends, and where it may write: what every command (and scripts/sweep.py) shares.

`run_cli` turns what a command raises into one line on stderr and an exit status (2 for a bad command line, 1 when
the run cannot go on; --debug shows the traceback). `checked_folder` and `checked_output` refuse, before any work, a
path the command could not write as given, or one inside a run folder, which only the commands that built it write.
"""
import errno
import os
import sys

import minigpt_np as mg
from minigpt_np.fast.memory import keep_freed_memory

from ..run.run_folder import ORPHAN, read_json
from ..settings.options import UsageError


def run_cli(prog, body, argv):
    """Run body(argv); turn what it raises into one line on stderr and an exit status (2 usage, 1 runtime)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    keep_freed_memory()    # training steps reuse their freed activations instead of faulting them back in
    try:
        with mg.kernels.using("fast"):     # every command computes with the fast kernels, unless --kernels says
            body(argv)
    except UsageError as e:
        print(f"{prog}: error: {e} (see {prog} --help)", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the one place every failure becomes a message
        if "--debug" in argv:
            raise
        print(f"{prog}: {message_of(e)} (--debug shows the traceback)", file=sys.stderr)
        sys.exit(1)


def message_of(error):
    """What a failure says, on one line; an error of the file system as "FILE: reason", without errno's number, and
    naming the file the user gave where it happened to a temporary one beside it (<file>.<pid>.tmp)."""
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        advice = ("; free some disk space, then run the same command again to resume"
                  if error.errno == errno.ENOSPC else "")
        return f"{ORPHAN.sub('', os.fspath(error.filename))}: {error.strerror}{advice}"
    return " ".join(str(error).split()) or type(error).__name__


def checked_folder(folder, flag):
    """Refuse (UsageError) a folder option whose path is, or runs through, a file -> folder."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UsageError(f"{flag} {folder}: {existing} is a file, not a folder; give a folder (it is created if "
                         "missing)")
    return folder


def run_folder_around(file):
    """The run folder `file` lies in, if any: the nearest folder above it that holds a manifest.json of this project
    (the main job's, minichatgpt-pretrain's or an experiment's) -> its path, or None."""
    folder = os.path.dirname(os.path.abspath(file))
    while True:
        manifest = os.path.join(folder, "manifest.json")
        try:
            if os.path.isfile(manifest) and isinstance(read_json(manifest).get("stages"), dict):
                return folder
        except (ValueError, OSError, AttributeError, UnicodeDecodeError):
            pass
        if os.path.dirname(folder) == folder:
            return None
        folder = os.path.dirname(folder)


def checked_output(file, flag, folder=False):
    """Refuse (UsageError) an output path this command cannot write as given, before any work: empty, a symbolic
    link, a folder where a file is meant, under a file, not writable, or inside a run folder, which only the commands
    that built it write, under its lock and manifest -> file. folder: the path names a folder to make."""
    what = "folder" if folder else "file"
    if not file:
        raise UsageError(f"{flag} is empty; name the {what} to write")
    if os.path.islink(file):
        raise UsageError(f"{flag} {file} is a symbolic link; give the {what} itself")
    if os.path.isdir(file) and not folder:
        raise UsageError(f"{flag} {file} is a folder; give the path of a file to write")
    if folder:
        checked_folder(file, flag)
    existing = os.path.abspath(file)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    checked_folder(os.path.dirname(os.path.abspath(file)), flag)
    if not os.access(existing, os.W_OK):
        raise UsageError(f"{flag} {file}: {existing} cannot be written (permission denied); give a path you can "
                         "write")
    run_dir = run_folder_around(os.path.join(file, "x") if folder else file)
    if run_dir is not None:
        raise UsageError(f"{flag} {file} is inside the run folder {run_dir}, which only the commands that built it "
                         "write (a restart deletes what they did not record); give a path outside it")
    return file
