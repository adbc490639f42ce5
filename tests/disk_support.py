"""A small real file system for tests of a full disk: a tmpfs of its own, filled on demand.

Mounting needs root (the test machines run the suite as root). Nothing is simulated: the
kernel refuses the writes with ENOSPC, short writes included.
"""

from __future__ import annotations

import errno
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import TEST_STATE_ROOT


@contextmanager
def small_disk(size_bytes: int) -> Iterator[Path]:
    """A fresh tmpfs of ``size_bytes`` mounted under ``.soma-test/disks``, unmounted after."""
    path = TEST_STATE_ROOT / "disks" / uuid.uuid4().hex[:8]
    path.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert mounted.returncode == 0, f"cannot mount a tmpfs (run the suite as root): {mounted}"
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
        path.rmdir()


@contextmanager
def filled(disk: Path) -> Iterator[Path]:
    """Take every free block of ``disk`` with a filler file; remove it on the way out."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh:
        block = bytes(64 << 10)
        try:
            while True:
                fh.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        try:
            while True:  # the last partial block, a page at a time
                fh.write(block[:4096])
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    try:
        yield filler
    finally:
        filler.unlink()
