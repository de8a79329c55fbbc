"""`keep_freed_memory` makes malloc keep a freed block, so allocating it again costs no page faults.

Each check runs in a fresh Python process: the malloc settings belong to the whole process, and a fresh one has a
known history. The faults are counted with getrusage (minor faults: a page the kernel maps and zero-fills).
"""
import subprocess
import sys

import pytest

REUSE = """
import resource, sys
import numpy as np
from minigpt_np.fast.memory import keep_freed_memory

applied = keep_freed_memory() if sys.argv[1] == "keep" else None
a = np.ones(3 * 2 ** 20 // 4, np.float32)      # 3 MB: above malloc's default mmap threshold, below numpy's huge pages
del a
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = np.ones(3 * 2 ** 20 // 4, np.float32)      # the same block size again
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults_of_reallocation(mode):
    done = subprocess.run([sys.executable, "-c", REUSE, mode], capture_output=True, text=True, check=True)
    applied, faults = done.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's; other C libraries are left alone")
def test_keep_freed_memory_reuses_a_freed_block_without_page_faults():
    applied, kept = faults_of_reallocation("keep")
    _, default = faults_of_reallocation("default")
    print(f"faults re-allocating 3 MB: {default} by default, {kept} with keep_freed_memory")
    assert applied == "True"
    assert default >= 500, "the control: by default the freed block went back to the kernel (768 pages of 4 KB)"
    assert kept < 50


THREADS = """
import resource, sys, threading
import numpy as np
from minigpt_np.fast.memory import keep_freed_memory

applied = keep_freed_memory()
made = {}


def allocate():                                 # 80 MB in 8 MB blocks, a micro-batch's activations
    return [np.ones(2 * 2 ** 20, np.float32) for _ in range(10)]


def first():
    made["blocks"] = allocate()


def second():
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    made["again"] = allocate()
    made["faults"] = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before


for target in (first, second):                  # as `cores.on_two_cores` runs a step's second micro-batch
    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    made.pop("blocks", None)                    # freed on the main thread, as the replica's gradients are
print(applied, made["faults"])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's; other C libraries are left alone")
def test_memory_a_helper_thread_frees_is_reused_by_the_next_without_page_faults():
    done = subprocess.run([sys.executable, "-c", THREADS], capture_output=True, text=True, check=True)
    applied, faults = done.stdout.split()
    print(f"faults re-allocating 80 MB on a second helper thread: {faults} (5,152 without the one-arena setting)")
    assert applied == "True"
    assert int(faults) < 100
