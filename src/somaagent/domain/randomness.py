"""Random bits for identifiers that must be unique but need not be secret: event, session,
trace, span, budget-trace and reservation ids.

``os.urandom`` is a system call per id (a request draws about eight), and each call
releases the GIL, which lets any other thread of the process (the Kafka client's delivery
callbacks, the spool's syncer) take it from the event loop. These bits come from the
``random`` module's generator instead: seeded from the operating system when the module is
imported, and reseeded by the module itself in a forked child, so two processes never
share a stream. Never use them for anything secret: API keys and approval ids come from
``secrets``.
"""

from __future__ import annotations

import random

__all__ = ["random_bits", "random_bytes"]


def random_bits(bits: int) -> int:
    """A uniformly random non-negative integer below ``2**bits``."""
    return random.getrandbits(bits)


def random_bytes(size: int) -> bytes:
    """``size`` uniformly random bytes (a drop-in for ``os.urandom`` where no secret is made)."""
    return random.getrandbits(8 * size).to_bytes(size, "big")
