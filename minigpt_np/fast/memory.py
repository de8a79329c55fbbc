"""Keep the memory a training step frees, so the next step does not fault it back in page by page.

A training step allocates its activations (the logits alone are B x T x V numbers) and frees them after the
backward pass. glibc's malloc serves blocks this large from fresh mmap regions or from the top of its heap, and by
default gives both back to the kernel when they are freed. The next step then touches them again: one page fault
and one zero-filled 4 KB page at a time, thousands a step. How much of that a process pays depends on its history:
a process that loaded a corpus before training (the pipeline) sits on a heap whose top is trimmed every step, a
fresh one (a benchmark) does not (docs/gpt.md, "The fast kernels", has the measurements).

`keep_freed_memory` asks malloc to keep every block up to 32 MB (its largest setting) on its own free lists and
never to trim the heap: the resident set stays at the peak of a step, and the faults stop. It also keeps one heap
(arena) for all threads: a training step runs its second micro-batch on a helper thread (`cores`), and glibc
gives such a thread an arena of its own, whose heaps of at most 64 MB are unmapped again when a step frees them.
The numbers are not touched. It is a setting of the whole process, so the program decides, once: the command line
does (minichatgpt's run_cli), and so does scripts/bench.py for both engines.
"""
import ctypes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8     # mallopt parameters, from glibc's <malloc.h>
MMAP_THRESHOLD_MAX = 32 * 2 ** 20               # glibc's upper bound for M_MMAP_THRESHOLD on 64-bit systems


def keep_freed_memory():
    """Make glibc's malloc keep freed blocks for reuse instead of returning them to the kernel -> True if applied.

    False, and nothing changes, where the C library is not glibc (macOS, Windows, musl).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all([mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX), mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1),
                mallopt(M_ARENA_MAX, 1)])
