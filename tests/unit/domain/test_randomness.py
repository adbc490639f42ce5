"""Ids drawn from ``domain.randomness``: the right sizes, no repeats, and a forked child's
stream differs from its parent's (the ``random`` module reseeds it)."""

from __future__ import annotations

import os

from somaagent.domain.events import Codec, new_event_id
from somaagent.domain.randomness import random_bits, random_bytes


def test_sizes_and_ranges() -> None:
    for size in (0, 1, 8, 16, 33):
        assert len(random_bytes(size)) == size
    assert all(0 <= random_bits(62) < 1 << 62 for _ in range(1000))
    assert max(random_bits(8) for _ in range(5000)) == 255  # every bit gets used


def test_no_repeats_in_a_million_event_ids() -> None:
    codec = Codec()
    ids = [codec.new_event_id() for _ in range(500_000)]
    ids += [new_event_id() for _ in range(500_000)]
    assert len(set(ids)) == len(ids)
    assert ids[:500_000] == sorted(ids[:500_000])  # a codec's ids strictly increase


def test_a_forked_child_draws_other_bits_than_its_parent() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its first draw, then leave without cleanup
        os.write(write, random_bytes(16))
        os._exit(0)
    os.close(write)
    child = os.read(read, 16)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 16 and child != random_bytes(16)
