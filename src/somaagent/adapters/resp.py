"""A lean asyncio Redis client for the gateway's hot path: one connection, auto-pipelined.

Every command is written at once and its future queued; replies (RESP2, parsed by
hiredis) resolve the futures in order. Concurrent callers therefore share one socket and
one round trip per event-loop tick without any explicit pipeline, and a call costs a few
microseconds of Python instead of redis-py's pool, retry and parser layers.

Failure model: a connection error, a reset, or a reply that does not arrive within
``timeout_s`` (checked by one watchdog timer, not a timer per call) fails every pending
call with ``RespUnavailable`` and drops the connection; the next call reconnects. Error
replies (``-ERR ...``) raise ``RespError`` for that call only. Scripts run by EVALSHA and
are loaded on ``NOSCRIPT`` (after a restart or ``SCRIPT FLUSH``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar, cast
from urllib.parse import unquote, urlsplit

import hiredis

__all__ = ["RespClient", "RespError", "RespUnavailable", "Script", "unavailable_as"]

T = TypeVar("T")


class RespError(Exception):
    """An error reply from the server (for this call only)."""


class RespUnavailable(ConnectionError):
    """The server cannot be reached or did not answer in time."""


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script and its SHA1 (the EVALSHA name)."""

    source: str
    sha: str

    @classmethod
    def of(cls, source: str) -> Script:
        return cls(source, hashlib.sha1(source.encode()).hexdigest())

    @classmethod
    def packaged(cls, name: str) -> Script:
        """One of the package's scripts (``somaagent/adapters/lua/<name>``)."""
        return cls.of(resources.files("somaagent.adapters").joinpath("lua", name).read_text())


async def unavailable_as(work: Awaitable[T], error: type[Exception]) -> T:
    """``work``'s reply; ``error`` (one line naming the cause) when Redis cannot be reached,
    did not answer in time, is still loading its data or is a read-only replica. Other error
    replies (a script's bug) propagate as they are."""
    try:
        return await work
    except (RespUnavailable, ConnectionError, TimeoutError) as exc:
        raise error(f"Redis unavailable: {exc}") from exc
    except RespError as exc:
        if str(exc).startswith(("LOADING", "READONLY")):
            raise error(f"Redis unavailable: {exc}") from exc
        raise


def _encode_py(args: tuple[Any, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(raw), raw))
    return b"".join(parts)


def _encode(args: tuple[Any, ...]) -> bytes:
    """One command in RESP: hiredis's C packer (str, bytes, int and float arguments, the
    same bytes as ``_encode_py``, a test checks), the Python one for anything else."""
    try:
        return hiredis.pack_command(args)  # type: ignore[no-any-return]
    except TypeError:
        return _encode_py(args)


class _Protocol(asyncio.Protocol):
    def __init__(self, on_lost: Any) -> None:
        self.reader = hiredis.Reader(replyError=RespError, encoding="utf-8")
        self.pending: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.transport: asyncio.Transport | None = None
        self._on_lost = on_lost
        # Commands of one event-loop tick go out in one write (one syscall for all the
        # calls made concurrently), flushed by a call_soon callback. A deferred command
        # waits in the outbox for the next command's write, or its own timer at the latest.
        self.outbox: list[bytes] = []
        self._soon = False
        self._later: asyncio.TimerHandle | None = None

    def queue(self, data: bytes, defer_s: float = 0.0) -> None:
        self.outbox.append(data)
        if self._soon:
            return
        loop = asyncio.get_running_loop()
        if defer_s <= 0.0:
            self._soon = True
            loop.call_soon(self.flush)
        elif self._later is None:
            self._later = loop.call_later(defer_s, self.flush)

    def flush(self) -> None:
        self._soon = False
        if self._later is not None:
            self._later.cancel()
            self._later = None
        out, self.outbox = self.outbox, []
        if self.transport is not None and out:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        pending = self.pending
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:  # not RESP: nothing after it can be trusted
                self.fail(RespUnavailable(f"Redis sent an invalid reply: {exc}"))
                return
            if reply is False:
                return
            if not pending:  # a reply nobody asked for: the stream is out of step
                self.fail(RespUnavailable("unexpected reply from Redis"))
                return
            future, _ = pending.popleft()
            if future.done():
                continue
            if isinstance(reply, RespError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RespUnavailable(f"connection to Redis lost: {exc or 'closed'}"))

    def fail(self, exc: Exception) -> None:
        transport, self.transport = self.transport, None
        self.outbox = []
        if self._later is not None:
            self._later.cancel()
            self._later = None
        pending, self.pending = self.pending, deque()
        for future, _ in pending:
            if not future.done():
                future.set_exception(exc)
        if transport is not None:
            transport.abort()
        self._on_lost(self)


class RespClient:
    """One auto-pipelined connection to ``redis://[:password@]host:port[/db]``."""

    def __init__(self, url: str, *, timeout_s: float = 2.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", ""):
            raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r} (redis:// only)")
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._password = unquote(parts.password) if parts.password else None
        self._username = unquote(parts.username) if parts.username else None
        path = parts.path.strip("/")
        self._db = int(path) if path else 0
        self._timeout_s = timeout_s
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._closed = False

    # ------------------------------------------------------------------ connection
    def _lost(self, proto: _Protocol) -> None:
        if self._proto is proto:
            self._proto = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(self._lost), self._host, self._port),
                self._timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            raise RespUnavailable(
                f"cannot connect to Redis at {self._host}:{self._port}: {exc or 'timeout'}"
            ) from exc
        self._proto = proto
        hello: list[tuple[Any, ...]] = []
        if self._password is not None:
            creds = (self._username, self._password) if self._username else (self._password,)
            hello.append(("AUTH", *creds))
        if self._db:
            hello.append(("SELECT", self._db))
        for command in hello:
            try:
                await self._send(proto, command)
            except RespError as exc:
                proto.fail(RespUnavailable(f"Redis refused {command[0]}: {exc}"))
                raise RespUnavailable(f"Redis refused {command[0]}: {exc}") from exc
        self._arm_watchdog(loop)
        return proto

    async def _protocol(self) -> _Protocol:
        proto = self._proto
        if proto is not None and proto.transport is not None:
            return proto
        if self._closed:
            raise RespUnavailable("client closed")
        if self._connecting is None or self._connecting.done():
            loop = asyncio.get_running_loop()
            self._connecting = loop.create_future()
            connecting = self._connecting
            try:
                connecting.set_result(await self._connect())
            except BaseException as exc:
                connecting.set_exception(exc)
                connecting.exception()  # retrieved: waiters re-raise it themselves
                self._connecting = None
                raise
            return connecting.result()
        return await asyncio.shield(self._connecting)

    def _arm_watchdog(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._watchdog is None and not self._closed:
            period = max(0.01, self._timeout_s / 4)
            self._watchdog = loop.call_later(period, self._check, loop, period)

    def _check(self, loop: asyncio.AbstractEventLoop, period: float) -> None:
        self._watchdog = None
        proto = self._proto
        if proto is not None and proto.pending:
            _, sent_at = proto.pending[0]
            if time.monotonic() - sent_at > self._timeout_s:
                proto.fail(RespUnavailable(f"Redis did not answer in {self._timeout_s} s"))
        if self._proto is not None:
            self._watchdog = loop.call_later(period, self._check, loop, period)

    # ------------------------------------------------------------------ commands
    @staticmethod
    def _send(proto: _Protocol, args: tuple[Any, ...], defer_s: float = 0.0) -> asyncio.Future[Any]:
        if proto.transport is None:
            raise RespUnavailable("connection to Redis lost")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        proto.pending.append((future, time.monotonic()))
        proto.queue(_encode(args), defer_s)
        return future

    async def execute(self, *args: Any) -> Any:
        """Run one command; its reply (str, int, list, None)."""
        proto = await self._protocol()
        return await self._send(proto, args)

    async def many(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Run several commands in one write; their replies in order (an error reply is
        raised after every reply has arrived)."""
        proto = await self._protocol()
        futures = [self._send(proto, command) for command in commands]  # one tick: one write
        # Replies come in order: once the last is in, every one is (or the connection
        # failed, which fails them all).
        with contextlib.suppress(Exception):
            await futures[-1]
        replies = []
        error: BaseException | None = None
        for future in futures:
            exc = future.exception()
            if exc is not None:
                error = error or exc
            else:
                replies.append(future.result())
        if error is not None:
            raise error
        return replies

    async def run_script(self, script: Script, keys: list[str], args: list[str]) -> Any:
        """EVALSHA, loading the script first when the server does not know it."""
        proto = await self._protocol()
        future = self._send(proto, ("EVALSHA", script.sha, len(keys), *keys, *args))
        return await self._script_reply(future, script, keys, args)

    def submit_script(
        self, script: Script, keys: list[str], args: list[str], *, defer_s: float = 0.0
    ) -> Awaitable[Any]:
        """``run_script``, with the command queued before this returns when connected: it
        goes out ahead of every command issued after this call, whether or not (or when)
        the caller awaits the result.

        ``defer_s > 0``: the command may wait that long for company, leaving in the write
        of the next command issued (one syscall and one round trip for both) or when the
        time is up. For commands whose reply nobody is waiting for; order is unchanged.
        """
        proto = self._proto
        if proto is None or proto.transport is None:
            return self.run_script(script, keys, args)
        future = self._send(proto, ("EVALSHA", script.sha, len(keys), *keys, *args), defer_s)
        return self._script_reply(future, script, keys, args)

    async def _script_reply(
        self, future: asyncio.Future[Any], script: Script, keys: list[str], args: list[str]
    ) -> Any:
        """The reply to an EVALSHA already sent; on ``NOSCRIPT``, load the script and run it
        again (after a restart or ``SCRIPT FLUSH``)."""
        try:
            return await future
        except RespError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self.execute("SCRIPT", "LOAD", script.source)
        return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)

    async def aclose(self) -> None:
        """Close the connection; pending calls fail with ``RespUnavailable``."""
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        proto, self._proto = self._proto, None
        if proto is not None:
            proto.fail(RespUnavailable("client closed"))
