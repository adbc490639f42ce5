"""A durable, ordered, append-only local log of records awaiting delivery to Kafka.

Every published event is appended here *before* it is handed to the Kafka client, so neither
an absent broker nor a ``kill -9`` of the process loses it: what was not acknowledged by the
broker is replayed, in append order, from the segments on disk. Replays can produce
duplicates in Kafka; consumers de-duplicate by ``event_id`` (see docs/decisions.md).

Layout: ``<dir>/<first-seq:020d>.seg`` segment files of records
``[u32 length][u32 crc32][u64 seq][u16 topic-len][topic][u32 key-len][key][value]`` and a
``watermark`` file holding the lowest sequence number not yet known to be delivered.
A torn record at the end of the last segment (crash mid-write) is detected by its CRC and
ignored; a segment reopened for appending is first cut back to its last whole record. One
process owns a spool directory at a time (``flock``).

A write the file system refuses (disk full, an I/O error) raises :class:`SpoolWriteError` and
leaves nothing of the refused records behind: the segment is cut back to where they began.
The spool is then *not writable* until :meth:`Spool.probe` or a later append succeeds; the
caller decides what to do with the records meanwhile (see ``kafka_publisher``).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = ["Spool", "SpoolLockedError", "SpoolWriteError", "SpooledRecord"]

log = logging.getLogger("somaagent.spool")

_HEAD = struct.Struct("<II")  # length of the body, crc32 of the body
_SEQ = struct.Struct("<QH")  # seq, topic length
_KEYLEN = struct.Struct("<I")


class SpoolLockedError(RuntimeError):
    """Another live process owns this spool directory."""


class SpoolWriteError(RuntimeError):
    """The file system refused the records (disk full, I/O error); none of them was kept."""


@dataclass(frozen=True, slots=True)
class SpooledRecord:
    seq: int
    topic: str
    key: bytes
    value: bytes


def _encode(seq: int, topic: str, key: bytes, value: bytes) -> bytes:
    t = topic.encode()
    body = b"".join((_SEQ.pack(seq, len(t)), t, _KEYLEN.pack(len(key)), key, value))
    return _HEAD.pack(len(body), zlib.crc32(body)) + body


def _records(data: bytes) -> Iterator[tuple[int, SpooledRecord]]:
    """Each whole record of a segment's bytes with the offset just past it."""
    pos = 0
    while pos + _HEAD.size <= len(data):
        length, crc = _HEAD.unpack_from(data, pos)
        body = data[pos + _HEAD.size : pos + _HEAD.size + length]
        if len(body) < length or zlib.crc32(body) != crc:
            return  # torn tail from a crash mid-write: never acknowledged, never delivered
        seq, tlen = _SEQ.unpack_from(body, 0)
        off = _SEQ.size
        topic = body[off : off + tlen].decode()
        off += tlen
        (klen,) = _KEYLEN.unpack_from(body, off)
        off += _KEYLEN.size
        pos += _HEAD.size + length
        yield pos, SpooledRecord(seq, topic, body[off : off + klen], body[off + klen :])


def _read_segment(path: Path) -> Iterator[SpooledRecord]:
    for _end, record in _records(path.read_bytes()):
        yield record


def _write_all(fh: BinaryIO, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = fh.write(view)
        if not written:
            raise OSError(errno.EIO, "write() took no bytes")
        view = view[written:]


def _whole_length(path: Path) -> int:
    """The length of a segment's leading run of whole records (0 if there is none)."""
    end = 0
    for end, _record in _records(path.read_bytes()):  # noqa: B007 - the last one counts
        pass
    return end


class Spool:
    """Append, acknowledge and replay records; thread-safe."""

    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int = 16 << 20,
        fsync_interval_s: float = 0.2,
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_fh = open(directory / "lock", "a+b")  # noqa: SIM115 - held for our lifetime
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_fh.close()
            raise SpoolLockedError(f"spool {directory} is owned by another process") from None
        self._segment_bytes = segment_bytes
        self._fsync_interval_s = fsync_interval_s
        self._mutex = threading.Lock()
        self._checkpoint_lock = threading.Lock()
        self._watermark = self._load_watermark()
        self._segments = self._scan_segments()
        self._unacked: set[int] = set()
        self._next_seq = self._watermark
        for record in self._iter_from(self._watermark):
            self._unacked.add(record.seq)
            self._next_seq = record.seq + 1
        self._writer: BinaryIO | None = None
        self._writer_bytes = 0
        self._dirty = False
        self._write_error: str | None = None
        # fsync runs in this thread, never in the caller of append_many (the gateway's
        # event loop): a disk flush there stalled every request in flight.
        self._stop_sync = threading.Event()
        self._syncer = threading.Thread(target=self._sync_loop, name="spool-sync", daemon=True)
        self._syncer.start()

    # ------------------------------------------------------------------ state
    def _load_watermark(self) -> int:
        try:
            return int((self.directory / "watermark").read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _scan_segments(self) -> list[tuple[int, Path]]:
        found = []
        for path in self.directory.glob("*.seg"):
            try:
                found.append((int(path.stem), path))
            except ValueError:
                continue
        return sorted(found)

    def _iter_from(self, seq: int) -> Iterator[SpooledRecord]:
        for _first, path in list(self._segments):
            for record in _read_segment(path):
                if record.seq >= seq:
                    yield record

    @property
    def depth(self) -> int:
        """Records appended but not yet acknowledged as delivered."""
        return len(self._unacked)

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def writable(self) -> bool:
        """False from a refused write until a probe or an append succeeds again."""
        return self._write_error is None

    @property
    def write_error(self) -> str | None:
        """Why the last write was refused (``None`` while the spool is writable)."""
        return self._write_error

    # ------------------------------------------------------------------ write
    def _open_writer(self) -> BinaryIO:
        if self._writer is not None and self._writer_bytes < self._segment_bytes:
            return self._writer
        if self._writer is not None:  # rolling over: the old segment is complete
            self._close_writer(sync=True)
        path = self.directory / f"{self._next_seq:020d}.seg"
        if path.exists():  # left by a refused write or a crash: keep its whole records only
            os.truncate(path, _whole_length(path))
        # Unbuffered: every append is one write() of its own, and nothing of a refused one
        # lingers in a buffer to reach the file later.
        writer = open(path, "ab", buffering=0)  # noqa: SIM115 - closed on roll and in close()
        self._writer = writer
        self._writer_bytes = os.fstat(writer.fileno()).st_size
        if not self._segments or self._segments[-1][1] != path:
            self._segments.append((self._next_seq, path))
        return writer

    def _close_writer(self, *, sync: bool) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        try:
            if sync:
                os.fsync(writer.fileno())
        except OSError as exc:  # its records are written; the page cache still holds them
            log.warning("spool %s: fsync of %s failed: %s", self.directory, writer.name, exc)
        finally:
            writer.close()

    def append_many(self, records: list[tuple[str, bytes, bytes]]) -> list[int]:
        """Append ``(topic, key, value)`` records in order; return their sequence numbers.

        The bytes reach the operating system before this returns (they survive a crash of
        this process); the spool's own thread fsyncs them at most ``fsync_interval_s`` later.
        Raises :class:`SpoolWriteError` if the file system refuses them: then none is kept.
        """
        with self._mutex:
            first = self._next_seq
            blob = b"".join(
                [
                    _encode(first + i, topic, key, value)
                    for i, (topic, key, value) in enumerate(records)
                ]
            )
            try:
                writer = self._open_writer()
                written = writer.write(blob)
                if written != len(blob):  # a short write: the file system is nearly full
                    _write_all(writer, memoryview(blob)[written or 0 :])
            except OSError as exc:
                self._refused(exc)
                raise SpoolWriteError(f"spool {self.directory}: {exc}") from exc
            self._next_seq = first + len(records)
            seqs = list(range(first, self._next_seq))
            self._unacked.update(seqs)
            self._writer_bytes += len(blob)
            self._dirty = True
            self._write_error = None
            return seqs

    def _refused(self, exc: OSError) -> None:
        """Cut the segment back to before the refused records (under ``_mutex``)."""
        self._write_error = exc.strerror or str(exc)
        if self._writer is None:
            return
        try:
            os.ftruncate(self._writer.fileno(), self._writer_bytes)
        except OSError:  # the next append opens the segment again and cuts it then
            self._close_writer(sync=False)

    def probe(self, size: int = 64 << 10) -> bool:
        """Whether ``size`` bytes can be written beside the segments now (a scratch file is
        written and removed); a success makes the spool writable again."""
        path = self.directory / "probe"
        try:
            with open(path, "wb", buffering=0) as fh:
                _write_all(fh, bytes(size))
        except OSError as exc:
            with self._mutex:
                self._write_error = exc.strerror or str(exc)
            return False
        finally:
            path.unlink(missing_ok=True)
        with self._mutex:
            self._write_error = None
        return True

    def sync(self) -> None:
        """fsync everything appended so far (the file lock is not held during the fsync)."""
        with self._mutex:
            if self._writer is None:
                return
            fd = os.dup(self._writer.fileno())  # stays valid if a roll closes the writer
            self._dirty = False
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _sync_loop(self) -> None:
        while not self._stop_sync.wait(self._fsync_interval_s):
            if self._dirty:
                try:
                    self.sync()
                except OSError as exc:  # tried again at the next interval
                    self._dirty = True
                    log.warning("spool %s: fsync failed: %s", self.directory, exc)

    def append(self, topic: str, key: bytes, value: bytes) -> int:
        return self.append_many([(topic, key, value)])[0]

    # ------------------------------------------------------------------ ack / replay
    def ack_many(self, seqs: list[int]) -> None:
        """Mark every one of ``seqs`` delivered, under one lock (in any order)."""
        with self._mutex:
            self._unacked.difference_update(seqs)

    def pending(self, after: int = -1, limit: int = 10_000) -> list[SpooledRecord]:
        """Unacknowledged records with ``seq > after``, oldest first, at most ``limit``."""
        with self._mutex:
            if not self._unacked:
                return []
            low = max(min(self._unacked), after + 1)
            wanted = set(self._unacked)
        out = []
        for record in self._iter_from(low):
            if record.seq in wanted:
                out.append(record)
                if len(out) >= limit:
                    break
        return out

    def checkpoint(self) -> None:
        """Persist the watermark and delete segments whose records are all delivered."""
        try:
            self.sync()
        except OSError as exc:  # the sync thread tries again; the decision below stands
            log.warning("spool %s: fsync failed: %s", self.directory, exc)
        # Only the decision is taken under the lock; the file writes, the rename and the
        # unlinks are not, so an append (the gateway's event loop) never waits for them.
        # A watermark read now stays a valid lower bound however late it is written, and
        # a segment chosen here has no undelivered record and is not the one appended to.
        with self._mutex:
            watermark = min(self._unacked) if self._unacked else self._next_seq
            keep: list[tuple[int, Path]] = []
            drop: list[Path] = []
            for i, (first, path) in enumerate(self._segments):
                nxt = self._segments[i + 1][0] if i + 1 < len(self._segments) else None
                current = self._writer is not None and path == Path(self._writer.name)
                if nxt is not None and nxt <= watermark and not current:
                    drop.append(path)
                else:
                    keep.append((first, path))
            self._segments = keep
        with self._checkpoint_lock:  # close() and the publisher's thread may both be here
            # Segments first: deleting them frees space even when the disk is full, and a
            # watermark written later (or never) is still a valid lower bound.
            for path in drop:
                path.unlink(missing_ok=True)
            if watermark > self._watermark:
                tmp = self.directory / "watermark.tmp"
                try:
                    tmp.write_text(str(watermark))
                    os.replace(tmp, self.directory / "watermark")
                except OSError as exc:  # written at a later checkpoint
                    log.warning("spool %s: watermark not written: %s", self.directory, exc)
                    return
                self._watermark = watermark

    def close(self) -> None:
        self._stop_sync.set()
        self._syncer.join(timeout=5)
        self.checkpoint()
        with self._mutex:
            self._close_writer(sync=False)  # checkpoint() has just synced it
        fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
        self._lock_fh.close()
