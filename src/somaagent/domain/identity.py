"""Who is calling, and the envelope a request carries into every event (pure: no I/O).

An API key names the caller's tenant, persona and role (``Caller``). The rest of the
envelope comes from the request: ``mode``, ``session_id`` and ``budget_trace_id`` from the
``X-Soma-*`` headers or from the body's ``metadata`` object (a header wins), and the W3C
trace context from ``traceparent``. Each value is checked against the same constraint the
event contracts apply (``SafeName`` for names, ``Opaque`` for ids), so a request that gets
through here can never produce an event the contract rejects.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from somaagent.domain.events import new_event_id
from somaagent.domain.events._types import Opaque, SafeName
from somaagent.domain.randomness import random_bytes as fast_random_bytes
from somaagent.domain.rate_limits import RateLimits

__all__ = [
    "BUDGET_TRACE_HEADER",
    "DEFAULT_MODE",
    "MODE_HEADER",
    "SESSION_HEADER",
    "TRACEPARENT_HEADER",
    "Caller",
    "IdentityError",
    "RequestContext",
    "TraceContext",
    "build_request_context",
    "check_safe_name",
    "parse_traceparent",
]

MODE_HEADER = "x-soma-mode"
BUDGET_TRACE_HEADER = "x-soma-budget-trace-id"
SESSION_HEADER = "x-soma-session-id"
TRACEPARENT_HEADER = "traceparent"
DEFAULT_MODE = "chat"

RandomBytes = Callable[[int], bytes]


class IdentityError(Exception):
    """A request's identity or envelope value is invalid; ``status`` is the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Caller:
    """The owner of a valid API key. Authorisation by role is the policy engine's job."""

    key_id: str
    tenant: str
    persona: str
    role: str
    limits: RateLimits | None = None  # the key's rate limits (None: not limited)
    tenant_limits: RateLimits | None = None  # its tenant's, shared by all its keys


class _Rule:
    """The length and pattern bounds of one contract type, read from its ``msgspec.Meta``."""

    def __init__(self, annotated: Any, charset: str) -> None:
        meta = typing.get_args(annotated)[1]
        self.min_length: int = meta.min_length
        self.max_length: int = meta.max_length
        self._search = re.compile(meta.pattern).search
        self.description = f"{self.min_length}-{self.max_length} {charset}"

    def ok(self, value: str) -> bool:
        return self.min_length <= len(value) <= self.max_length and bool(self._search(value))


_SAFE_NAME = _Rule(SafeName, "characters from A-Z a-z 0-9 . _ : @ / -")
_OPAQUE = _Rule(Opaque, "printable ASCII characters without spaces")


def _show(value: str) -> str:
    """``value`` for an error message: quoted, escaped and cut short."""
    return repr(value[:40]) + ("..." if len(value) > 40 else "")


def check_safe_name(field: str, value: str) -> str:
    """Return ``value`` if it is a contract ``SafeName``; raise ``ValueError`` naming ``field``."""
    if not _SAFE_NAME.ok(value):
        raise ValueError(f"{field} must be {_SAFE_NAME.description}, got {_show(value)}")
    return value


@dataclass(frozen=True, slots=True)
class TraceContext:
    """W3C trace context of one request.

    ``span_id`` is this request's own span (always new); ``parent_span_id`` is the caller's
    span from a valid ``traceparent``, or ``None`` when this request starts the trace.
    """

    trace_id: str
    span_id: str
    parent_span_id: str | None
    sampled: bool

    @property
    def traceparent(self) -> str:
        """The ``traceparent`` header to send downstream (version 00, this request's span)."""
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"


_TRACEPARENT = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace_id>[0-9a-f]{32})-(?P<parent_id>[0-9a-f]{16})"
    r"-(?P<flags>[0-9a-f]{2})"
)


def _random_hex(random_bytes: RandomBytes, size: int) -> str:
    raw = random_bytes(size)
    if not any(raw):  # all-zero ids are invalid in W3C trace context
        raw = raw[:-1] + b"\x01"
    return raw.hex()


def parse_traceparent(
    value: str | None, *, random_bytes: RandomBytes = fast_random_bytes
) -> TraceContext:
    """Continue the trace named by a W3C ``traceparent`` header, or start a new one.

    Follows Trace Context Level 1: lowercase hex only; version ``ff``, an all-zero trace-id or
    parent-id, or a version-00 header of any length but 55 is invalid. A higher version is
    read by its first four fields when what follows them starts with ``-``. An absent or
    invalid header starts a new, sampled trace (the specification's rule: never fail the
    request over it).
    """
    span_id = _random_hex(random_bytes, 8)
    match = _TRACEPARENT.match(value.strip(" \t")) if value else None
    if match is not None:
        text = match.string
        version = match["version"]
        trace_id, parent_id = match["trace_id"], match["parent_id"]
        well_formed = (
            version != "ff"
            and (len(text) == 55 if version == "00" else len(text) == 55 or text[55] == "-")
            and trace_id != "0" * 32
            and parent_id != "0" * 16
        )
        if well_formed:
            sampled = bool(int(match["flags"], 16) & 0x01)
            return TraceContext(trace_id, span_id, parent_id, sampled)
    return TraceContext(_random_hex(random_bytes, 16), span_id, None, True)


@dataclass(frozen=True, slots=True)
class RequestContext:
    """The caller plus the request's envelope values, all valid against the event contract."""

    caller: Caller
    mode: str
    session_id: str
    budget_trace_id: str
    trace: TraceContext
    session_generated: bool  # no session id was sent: this request is a session of its own

    def envelope_fields(self) -> dict[str, str]:
        """The envelope fields this request fixes (all but event id, type, time, producer)."""
        caller = self.caller
        return {
            "tenant": caller.tenant,
            "persona": caller.persona,
            "role": caller.role,
            "mode": self.mode,
            "session_id": self.session_id,
            "budget_trace_id": self.budget_trace_id,
            "trace_id": self.trace.trace_id,
            "span_id": self.trace.span_id,
        }


def _pick(
    headers: Mapping[str, str],
    metadata: Mapping[str, Any] | None,
    header: str,
    key: str,
    rule: _Rule,
) -> str | None:
    """The value of ``header``, else ``metadata[key]``; validated; ``None`` when neither is set.

    A header that is present but invalid is an error even when ``metadata`` has a valid value:
    silently falling back would hide the client's mistake.
    """
    value: Any = headers.get(header)
    if value is not None:
        where = f"{_title(header)} header"
    else:
        value = metadata.get(key) if metadata is not None else None
        if value is None:
            return None
        where = f"metadata.{key}"
        if not isinstance(value, str):
            raise IdentityError(
                400, f"invalid {where}: must be a string, got {type(value).__name__}"
            )
    if not rule.ok(value):
        raise IdentityError(400, f"invalid {where}: must be {rule.description}, got {_show(value)}")
    return str(value)


def _title(header: str) -> str:
    return "-".join(part.capitalize() for part in header.split("-"))


def _budget_trace_id(tenant: str, now: datetime, random_bytes: RandomBytes) -> str:
    """``<tenant>:<YYYYMMDD>:<16 hex>``; the tenant is cut so the whole fits ``Opaque``."""
    day = now.astimezone(UTC)  # formatted by hand: strftime costs several times more
    suffix = f":{day.year:04d}{day.month:02d}{day.day:02d}:{random_bytes(8).hex()}"
    return tenant[: _OPAQUE.max_length - len(suffix)] + suffix


def build_request_context(
    caller: Caller,
    headers: Mapping[str, str],
    metadata: Mapping[str, Any] | None = None,
    *,
    now: datetime | None = None,
    random_bytes: RandomBytes = fast_random_bytes,
) -> RequestContext:
    """Build a request's envelope from its headers and its body's ``metadata``.

    ``headers`` is looked up by lowercase name (Starlette's ``Headers`` and ASGI both use
    lowercase). Headers ``X-Soma-Mode``, ``X-Soma-Session-Id`` and ``X-Soma-Budget-Trace-Id``
    win over ``metadata`` keys ``mode``, ``session_id`` and ``budget_trace_id``; a ``null``
    metadata value counts as absent. Defaults: mode ``"chat"``; session id a fresh UUIDv7;
    budget trace id ``<tenant>:<UTC date YYYYMMDD>:<16 random hex>``.

    Raises ``IdentityError(400, ...)`` naming the offending header or metadata key.
    """
    mode = _pick(headers, metadata, MODE_HEADER, "mode", _SAFE_NAME)
    session_id = _pick(headers, metadata, SESSION_HEADER, "session_id", _OPAQUE)
    budget_trace_id = _pick(headers, metadata, BUDGET_TRACE_HEADER, "budget_trace_id", _OPAQUE)
    if budget_trace_id is None:
        when = now if now is not None else datetime.now(UTC)
        budget_trace_id = _budget_trace_id(caller.tenant, when, random_bytes)
    return RequestContext(
        caller=caller,
        mode=mode if mode is not None else DEFAULT_MODE,
        session_id=session_id if session_id is not None else new_event_id(),
        budget_trace_id=budget_trace_id,
        trace=parse_traceparent(headers.get(TRACEPARENT_HEADER), random_bytes=random_bytes),
        session_generated=session_id is None,
    )
