"""Bytes <-> events, with the contract enforced both ways; event ids and timestamps.

The producer and the consumer validate with the same msgspec types (the producer scans its
free-form JSON objects rather than rebuilding them; see ``_producer_check``). They apply
exactly the constraints the shipped JSON Schemas state (a test proves they agree) plus the
cross-field invariants JSON Schema cannot express, at a small fraction of the cost of a
Python JSON Schema validator.
"""

from __future__ import annotations

import re
import threading
import time
import typing
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from somaagent.domain.events._batch_decode import BatchDecoder
from somaagent.domain.events._catalog import EVENT_TYPES, Event
from somaagent.domain.events._errors import ContractError
from somaagent.domain.events._producer_check import ProducerCheck
from somaagent.domain.events._types import dec_hook, enc_hook
from somaagent.domain.randomness import random_bytes

__all__ = [
    "MAX_EVENT_BYTES",
    "Codec",
    "ContractError",
    "format_timestamp",
    "new_event_id",
    "utc_now_iso",
    "uuid7_from",
]

MAX_EVENT_BYTES = 64 * 1024

_AT_PATH = re.compile(r"^(?P<message>.*) - at `\$\.?(?P<path>[^`]*)`$", re.DOTALL)
_FIELD_PRESENCE = re.compile(
    r"^Object (?P<what>missing required|contains unknown) field `(?P<name>[^`]*)`$"
)
_PRESENCE_WORDS = {
    "missing required": "missing required field",
    "contains unknown": "unknown field",
}
_SUBMS_STEPS = 4096  # 12 bits of sub-millisecond precision (RFC 9562 section 6.2, method 3)


def _reason(exc: msgspec.ValidationError) -> str:
    """msgspec's message on one line, starting with the field (or JSON path) concerned."""
    message, path = " ".join(str(exc).split()), ""
    at_path = _AT_PATH.match(message)
    if at_path is not None:
        message, path = at_path.group("message"), at_path.group("path")
    presence = _FIELD_PRESENCE.match(message)
    if presence is not None:
        where = f"{path}.{presence.group('name')}" if path else presence.group("name")
        return f"{where}: {_PRESENCE_WORDS[presence.group('what')]}"
    if path or message.startswith("Expected"):
        return f"{path or '$'}: {message}"
    return message  # raised by __post_init__, already "field: ..."


_BATCH_MIN = 4  # values; the batch decoder breaks even at about three (``decode_many``)


class Codec:
    """Encode and decode events with one compiled encoder and decoder.

    Build one per process (in ``bootstrap``) and share it: the compiled decoder is what makes
    validating tens of thousands of events per second per core possible. ``new_event_id``
    on a codec is strictly increasing across every thread using it.
    """

    def __init__(self, *, max_bytes: int = MAX_EVENT_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self._decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event, dec_hook=dec_hook)
        self._encoder = msgspec.json.Encoder(enc_hook=enc_hook)
        self._check = ProducerCheck(EVENT_TYPES.values(), dec_hook)
        self._batch = BatchDecoder(EVENT_TYPES.values(), dec_hook)
        for loose, strict in self._batch.strict_of.items():
            self._check.adopt(loose, strict)  # a decoded batch event re-encoded is checked
        self._id_lock = threading.Lock()
        self._last_id_clock = 0

    def decode(self, data: bytes | bytearray | memoryview) -> Event:
        """Parse and validate one event; raise ``ContractError`` saying what is wrong."""
        event: Event = self._validate(data, self._decoder)
        return event

    def decode_many(self, values: Sequence[bytes]) -> list[Event | ContractError]:
        """``decode`` of each value, the error in place of a refused one's event.

        The same verdicts and reasons as ``decode`` value by value, at about 60% of the
        cost for a batch whose strings repeat (see ``_batch_decode``): what the batch decoder
        does not accept is decoded again here, strictly. Below ``_BATCH_MIN`` values the
        per-pattern bookkeeping costs more than it saves (measured: 26 µs an event for a
        batch of one, 21 for two, against 15 strictly), so a small batch is decoded strictly.
        """
        if len(values) < _BATCH_MIN:
            return [self._strict_verdict(value) for value in values]
        loose = self._batch.decode(values, self.max_bytes)
        return [
            typing.cast(Event, event) if event is not None else self._strict_verdict(value)
            for event, value in zip(loose, values, strict=True)
        ]

    def _strict_verdict(self, value: bytes) -> Event | ContractError:
        try:
            return self.decode(value)
        except ContractError as exc:
            return exc

    def _validate(self, data: bytes | bytearray | memoryview, decoder: Any) -> Any:
        size = len(data) if type(data) is bytes else memoryview(data).nbytes
        if size > self.max_bytes:
            raise ContractError(f"oversize: {size} bytes, limit {self.max_bytes}")
        try:
            return decoder.decode(data)
        except msgspec.ValidationError as exc:
            raise ContractError(_reason(exc)) from None
        except msgspec.DecodeError as exc:
            raise ContractError(f"not JSON: {' '.join(str(exc).split())}") from None

    def encode(self, event: Event) -> bytes:
        """Serialise ``event``, then validate the bytes exactly as a consumer will.

        Constructing a Struct in Python checks no constraint; this is where a producer finds
        out, before anything is published. The free-form JSON objects are checked on the
        Python side and scanned, not rebuilt, in the bytes (see ``_producer_check``).
        """
        self._check.check_objects(event)
        try:
            data = self._encoder.encode(event)
        except (TypeError, NotImplementedError, msgspec.EncodeError) as exc:
            raise ContractError(f"not encodable: {exc}") from None
        self._validate(data, self._check.decoder)
        return data

    def encode_unchecked(self, event: Event) -> bytes:
        """Serialise ``event`` without the contract check, for an event that failed it: the
        consumer then dead-letters it with the reason, so it is kept, not dropped."""
        try:
            return self._encoder.encode(event)
        except (TypeError, NotImplementedError, msgspec.EncodeError) as exc:
            raise ContractError(f"not encodable: {exc}") from None

    def new_event_id(self) -> str:
        """A UUIDv7 greater than every id this codec returned before."""
        with self._id_lock:
            clock = max(_clock_from_ns(time.time_ns()), self._last_id_clock + 1)
            self._last_id_clock = clock
        return _uuid7_from_clock(clock, random_bytes(8))


def _clock_from_ns(unix_ns: int) -> int:
    """Milliseconds since the epoch in the high bits, 12 bits of sub-millisecond below."""
    unix_ms, sub_ns = divmod(unix_ns, 1_000_000)
    return (unix_ms << 12) | (sub_ns * _SUBMS_STEPS // 1_000_000)


def _uuid7_from_clock(clock: int, rand: bytes) -> str:
    unix_ms, sub_ms = clock >> 12, clock & 0xFFF
    if not 0 <= unix_ms < 1 << 48:
        raise ValueError("timestamp outside the UUIDv7 range")
    rand_b = int.from_bytes(rand[:8], "big") & ((1 << 62) - 1)
    value = (unix_ms << 80) | (0x7 << 76) | (sub_ms << 64) | (0b10 << 62) | rand_b
    hex_ = f"{value:032x}"
    return f"{hex_[:8]}-{hex_[8:12]}-{hex_[12:16]}-{hex_[16:20]}-{hex_[20:]}"


def uuid7_from(unix_ns: int, rand: bytes) -> str:
    """The UUIDv7 for a Unix time in nanoseconds and 8 random bytes (RFC 9562, method 3).

    48 bits of milliseconds, version 7, 12 bits of sub-millisecond fraction, variant ``10``,
    62 random bits.
    """
    if len(rand) < 8:
        raise ValueError("need 8 random bytes")
    return _uuid7_from_clock(_clock_from_ns(unix_ns), rand)


def new_event_id() -> str:
    """A fresh UUIDv7; ids drawn >= 245 ns apart sort in time order.

    Use ``Codec.new_event_id`` where strict ordering within a process matters.
    """
    return uuid7_from(time.time_ns(), random_bytes(8))


def format_timestamp(moment: datetime) -> str:
    """``moment`` as the contract's timestamp: UTC, microseconds, ``Z``."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: the contract needs an aware one")
    # isoformat is several times faster than strftime; "+00:00" becomes "Z".
    return moment.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def utc_now_iso() -> str:
    """The current time as the contract's timestamp, e.g. ``2025-01-31T12:00:00.123456Z``."""
    return format_timestamp(datetime.now(UTC))
