"""Slow storage stood in for: every ``fsync``/``fdatasync`` of a process waits a set time.

Network shares (NFS, SMB) and spinning disks take milliseconds to make a file durable (an
NFS COMMIT round trip, a disk's cache flush); this machine's disk takes ~0.05-0.2 ms. A
tiny ``LD_PRELOAD`` library (compiled here with the system's C compiler, cached under the
work folder) sleeps ``FSYNC_DELAY_US`` microseconds before each real call, in the process
and every child it starts, so ``lungseg segment`` can be timed as it would run against
such storage. Linux only; the benchmarks that take ``--fsync-delay-ms`` use it.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>

static void wait_a_while(void) {
    const char *text = getenv("FSYNC_DELAY_US");
    long us = text ? atol(text) : 0;
    if (us > 0) {
        struct timespec t = {us / 1000000, (us % 1000000) * 1000};
        nanosleep(&t, 0);
    }
}

int fsync(int fd) {
    static int (*real)(int) = 0;
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    wait_a_while();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int) = 0;
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    wait_a_while();
    return real(fd);
}
"""


def build_library(work: Path) -> Path:
    """The compiled library under ``work`` (built once per source version).

    Raises:
        RuntimeError: no C compiler (``cc``) on the PATH.
    """
    digest = hashlib.sha256(SOURCE.encode()).hexdigest()[:12]
    library = work / f"slow_fsync-{digest}.so"
    if library.is_file():
        return library
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("--fsync-delay-ms needs a C compiler (cc) to build its library")
    work.mkdir(parents=True, exist_ok=True)
    source = library.with_suffix(".c")
    source.write_text(SOURCE)
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(library), str(source), "-ldl"], check=True
    )
    return library


def fsync_delay_env(delay_ms: float, work: Path) -> dict[str, str]:
    """Environment variables that make a process's fsyncs wait ``delay_ms`` (none for 0)."""
    if delay_ms <= 0:
        return {}
    return {"LD_PRELOAD": str(build_library(work)), "FSYNC_DELAY_US": str(round(delay_ms * 1000))}
