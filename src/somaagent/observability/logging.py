"""Structured logs: one JSON object per line, tagged with the request's tenant, persona, mode
and trace id, and never carrying a prompt or a completion.

The gateway binds the request context with :func:`bind_log_context` (a ``contextvars``
variable, so each asyncio task and each thread sees its own); every record logged while it is
bound carries those fields, ``"-"`` where unknown. Fields passed through ``extra=`` are added
to the line, except the ones that would carry conversation text (:data:`REDACTED_FIELDS`),
which are dropped wherever they appear, nested mappings included.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar, Token
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

__all__ = [
    "REDACTED_FIELDS",
    "JsonFormatter",
    "LogContext",
    "RedactionFilter",
    "bind_log_context",
    "configure_logging",
    "current_log_context",
]

UNKNOWN = "-"
REDACTED_FIELDS = frozenset({"prompt", "completion", "messages", "content"})


@dataclass(frozen=True)
class LogContext:
    """The request facts every log line carries."""

    tenant: str = UNKNOWN
    persona: str = UNKNOWN
    mode: str = UNKNOWN
    trace_id: str = UNKNOWN


# A ContextVar is a key into the per-task context, not shared state: each request sees its own.
_CONTEXT: ContextVar[LogContext] = ContextVar("soma_log_context")
_NO_CONTEXT = LogContext()


def current_log_context() -> LogContext:
    """The context bound in this task or thread (all ``"-"`` when none is)."""
    return _CONTEXT.get(_NO_CONTEXT)


class _Binding:
    """Binds a log context from ``__enter__`` to ``__exit__`` (re-entrant per use)."""

    __slots__ = ("_changes", "_tokens")

    def __init__(self, changes: tuple[str | None, str | None, str | None, str | None]) -> None:
        self._changes = changes
        self._tokens: list[Token[LogContext]] = []

    def __enter__(self) -> LogContext:
        outer = _CONTEXT.get(_NO_CONTEXT)
        tenant, persona, mode, trace_id = self._changes
        bound = LogContext(
            outer.tenant if tenant is None else tenant,
            outer.persona if persona is None else persona,
            outer.mode if mode is None else mode,
            outer.trace_id if trace_id is None else trace_id,
        )
        self._tokens.append(_CONTEXT.set(bound))
        return bound

    def __exit__(self, *_exc: object) -> None:
        _CONTEXT.reset(self._tokens.pop())


def bind_log_context(
    *,
    tenant: str | None = None,
    persona: str | None = None,
    mode: str | None = None,
    trace_id: str | None = None,
) -> AbstractContextManager[LogContext]:
    """Bind the given fields (the others keep their outer value) until the block exits.

    A plain class rather than a generator context manager: the gateway binds one per call.
    """
    return _Binding((tenant, persona, mode, trace_id))


# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _scrub(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {
            str(k): _scrub(v) for k, v in value.items() if str(k).lower() not in REDACTED_FIELDS
        }
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


class RedactionFilter(logging.Filter):
    """Drop ``extra`` fields that could carry conversation text before any handler sees them."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key in [k for k in record.__dict__ if k.lower() in REDACTED_FIELDS]:
            delattr(record, key)
        return True


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON object on one line.

    Keys: ``timestamp`` (RFC 3339, UTC, milliseconds), ``level``, ``logger``, ``message``,
    ``tenant``, ``persona``, ``mode``, ``trace_id``, then the scrubbed ``extra`` fields and
    ``exception`` when there is one. ``default_mode`` fills ``mode`` when the context has none.
    """

    def __init__(self, *, default_mode: str = UNKNOWN) -> None:
        super().__init__()
        self._default_mode = default_mode

    def format(self, record: logging.LogRecord) -> str:
        ctx = _CONTEXT.get(_NO_CONTEXT)
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "tenant": ctx.tenant,
            "persona": ctx.persona,
            "mode": ctx.mode if ctx.mode != UNKNOWN else self._default_mode,
            "trace_id": ctx.trace_id,
        }
        for key, value in record.__dict__.items():
            if key in _RECORD_ATTRS or key.lower() in REDACTED_FIELDS or key.startswith("_"):
                continue
            line[key] = _scrub(value)
        if record.exc_info:
            line["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            line["exception"] = record.exc_text
        return orjson.dumps(line, default=str).decode()


class _SomaHandler(logging.StreamHandler[TextIO]):
    """Marks the handler ``configure_logging`` installed, so a second call replaces it."""


def configure_logging(
    level: int | str = logging.INFO,
    stream: TextIO | None = None,
    *,
    mode: str = UNKNOWN,
) -> logging.Handler:
    """Send every log record through one JSON-lines handler on ``stream`` (stderr by default).

    Called once by an entrypoint; calling it again replaces the handler it installed before
    (other handlers are left alone). ``mode`` is the profile (LOCAL, DEVELOPMENT,
    ENTERPRISE) printed when the request context does not name one.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _SomaHandler)]:
        root.removeHandler(old)
        old.close()
    handler = _SomaHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(default_mode=mode))
    handler.addFilter(RedactionFilter())
    root.addHandler(handler)
    root.setLevel(level)
    return handler
