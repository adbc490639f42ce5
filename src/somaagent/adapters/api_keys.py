"""API keys in PostgreSQL (table ``api_keys``, migration 0002), with an in-process cache.

A key reads ``sk-soma-<key_id>-<secret>``: ``key_id`` is 16 random hex characters (the primary
key, so a lookup is one index probe) and ``secret`` is 32 random bytes, URL-safe base64 (43
characters). Only ``sha256(secret)`` is stored. A slow password hash (scrypt, argon2) exists to
make guessing a *low-entropy* password expensive; a 256-bit random secret cannot be guessed
at any hash speed, so a fast hash loses nothing (GitHub and Stripe tokens are handled the
same way) and costs about a microsecond on a path that runs on every request.

Authentication on the hot path is answered from memory: each key row read from PostgreSQL
is cached for ``ttl_s`` (default 10 s, at most ``max_entries`` keys, least recently used
evicted first), and an unknown or revoked key id is cached as absent for ``negative_ttl_s``
(default 2 s), so repeating one bad key does not reach the database; a malformed key never
does. A revocation made by another process is therefore honoured within
``ttl_s``; one made through this store object is honoured at once. Expiry is checked on
every call against the cached expiry time, so it is exact. A key's row carries its own rate
limits and its tenant's (``tenant_limits``, migration 0007, read in the same statement), so
a tenant's limits change within ``ttl_s`` too.

Thread-safe: the cache has its own lock, and the single PostgreSQL connection (psycopg_pool
is not installed) is used under a second lock and reopened after a connection failure.
"""

from __future__ import annotations

import builtins
import enum
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar

import psycopg
from psycopg import errors

from somaagent.domain.identity import Caller, check_safe_name
from somaagent.domain.rate_limits import RateLimits, check_limit

__all__ = [
    "KEY_PREFIX",
    "NOT_CACHED",
    "ApiKeyError",
    "ApiKeyInfo",
    "ApiKeyStore",
    "InvalidKeyArgument",
    "KeyStoreUnavailable",
    "NotCached",
]

KEY_PREFIX = "sk-soma-"
_KEY_RE = re.compile(r"sk-soma-([0-9a-f]{16})-([A-Za-z0-9_-]{43})")
_KEY_LENGTH = len(KEY_PREFIX) + 16 + 1 + 43
_KEY_ID_RE = re.compile(r"[0-9a-f]{16}")
_NAME_RE = re.compile(r"[^\x00-\x1f\x7f]{1,200}")
_RETRY_CONNECT_AFTER_S = 1.0  # after a failed connect, fail fast for this long

T = TypeVar("T")
Conn = psycopg.Connection[tuple[Any, ...]]


class ApiKeyError(Exception):
    """Base of the errors this module raises."""


class InvalidKeyArgument(ApiKeyError, ValueError):
    """An argument to ``create`` or ``revoke`` is malformed."""


class KeyStoreUnavailable(ApiKeyError):
    """PostgreSQL cannot be reached: the caller should answer 503, not 401."""

    @classmethod
    def from_error(cls, exc: BaseException) -> KeyStoreUnavailable:
        """The error for a failed connection or query: one line, no DSN."""
        lines = str(exc).strip().splitlines()
        return cls(f"PostgreSQL unavailable: {lines[0] if lines else type(exc).__name__}")


class NotCached(enum.Enum):
    """Sentinel type of ``NOT_CACHED``."""

    NOT_CACHED = "not-cached"


NOT_CACHED = NotCached.NOT_CACHED


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    """A key as ``list`` shows it: everything except its secret (which is never stored)."""

    key_id: str
    tenant: str
    persona: str
    role: str
    name: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    rpm_limit: int | None = None
    tpm_limit: int | None = None

    def status(self, now: datetime) -> str:
        """``"revoked"``, ``"expired"`` or ``"active"`` at ``now`` (an aware datetime)."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


@dataclass(frozen=True, slots=True)
class _Row:
    """An unrevoked key row as the hot path needs it."""

    digest: bytes  # sha256(secret)
    caller: Caller
    expires_at: float | None  # Unix time


def _parse(plaintext: str) -> tuple[str, str] | None:
    match = _KEY_RE.fullmatch(plaintext) if len(plaintext) == _KEY_LENGTH else None
    return (match[1], match[2]) if match else None


def _check(row: _Row | None, secret: str) -> Caller | None:
    if row is None:
        return None
    if not hmac.compare_digest(row.digest, hashlib.sha256(secret.encode()).digest()):
        return None
    if row.expires_at is not None and row.expires_at <= time.time():
        return None
    return row.caller


class ApiKeyStore:
    """Create, authenticate, revoke and list API keys (see the module docstring).

    Nothing connects until the first call that needs the database.
    """

    def __init__(
        self,
        dsn: str,
        *,
        ttl_s: float = 10.0,
        negative_ttl_s: float = 2.0,
        max_entries: int = 10_000,
        connect_timeout_s: float = 5.0,
        statement_timeout_ms: int = 5_000,
    ) -> None:
        self._dsn = dsn
        self._ttl_s = ttl_s
        self._negative_ttl_s = negative_ttl_s
        self._max_entries = max_entries
        self._connect_timeout_s = connect_timeout_s
        self._statement_timeout_ms = statement_timeout_ms
        self._cache: OrderedDict[str, tuple[float, _Row | None]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._conn: Conn | None = None
        self._db_lock = threading.Lock()
        self._connect_again_at = 0.0

    # -- hot path ---------------------------------------------------------------------------

    def authenticate(self, plaintext: str) -> Caller | None:
        """The caller a key belongs to, or ``None`` for a malformed, unknown, wrong, revoked or
        expired key.

        May query PostgreSQL (blocking: call it from a thread); raises ``KeyStoreUnavailable``
        when it must and cannot.
        """
        parsed = _parse(plaintext)
        if parsed is None:
            return None
        key_id, secret = parsed
        row = self._cached(key_id)
        if row is NOT_CACHED:
            row = self._load(key_id)
        return _check(row, secret)

    def authenticate_cached(self, plaintext: str) -> Caller | None | Literal[NotCached.NOT_CACHED]:
        """Like ``authenticate`` but without I/O: ``NOT_CACHED`` when only the database knows.

        Lets an event loop answer most requests inline (a few microseconds under a lock held
        just as long) and send only misses to a thread.
        """
        parsed = _parse(plaintext)
        if parsed is None:
            return None
        key_id, secret = parsed
        row = self._cached(key_id)
        return NOT_CACHED if row is NOT_CACHED else _check(row, secret)

    def _cached(self, key_id: str) -> _Row | None | Literal[NotCached.NOT_CACHED]:
        with self._cache_lock:
            entry = self._cache.get(key_id)
            if entry is None:
                return NOT_CACHED
            if entry[0] <= time.monotonic():
                del self._cache[key_id]
                return NOT_CACHED
            self._cache.move_to_end(key_id)
            return entry[1]

    def _remember(self, key_id: str, row: _Row | None) -> None:
        ttl = self._ttl_s if row is not None else self._negative_ttl_s
        with self._cache_lock:
            self._cache[key_id] = (time.monotonic() + ttl, row)
            self._cache.move_to_end(key_id)
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)

    def _forget(self, key_id: str) -> None:
        with self._cache_lock:
            self._cache.pop(key_id, None)

    def _load(self, key_id: str) -> _Row | None:
        def fetch(conn: Conn) -> _Row | None:
            # Another thread may have loaded it while this one waited for the connection.
            row = self._cached(key_id)
            if row is not NOT_CACHED:
                return row
            found = conn.execute(
                "SELECT k.secret_sha256, k.tenant, k.persona, k.role, k.expires_at,"
                " k.rpm_limit, k.tpm_limit, t.rpm_limit, t.tpm_limit"
                " FROM api_keys k LEFT JOIN tenant_limits t ON t.tenant = k.tenant"
                " WHERE k.key_id = %s AND k.revoked_at IS NULL",
                (key_id,),
            ).fetchone()
            row = None
            if found is not None:
                digest, tenant, persona, role, expires_at, rpm, tpm, t_rpm, t_tpm = found
                caller = Caller(
                    key_id=key_id,
                    tenant=tenant,
                    persona=persona,
                    role=role,
                    limits=RateLimits.of(rpm, tpm),
                    tenant_limits=RateLimits.of(t_rpm, t_tpm),
                )
                expires = expires_at.timestamp() if expires_at is not None else None
                row = _Row(bytes.fromhex(digest), caller, expires)
            self._remember(key_id, row)
            return row

        return self._run(fetch, retry=True)

    # -- administration ---------------------------------------------------------------------

    def create(
        self,
        tenant: str,
        persona: str,
        role: str,
        *,
        name: str | None = None,
        expires_at: datetime | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
    ) -> tuple[str, str]:
        """Store a new key; return ``(key_id, plaintext_key)``. The plaintext is not kept.

        Raises ``InvalidKeyArgument`` when tenant, persona or role is not a contract
        ``SafeName``, ``name`` is empty, longer than 200 characters or has control
        characters, ``expires_at`` is naive, or a rate limit (``rpm``, ``tpm``: requests and
        tokens per minute, None = not limited) is not an integer from 1 to 10**9.
        """
        try:
            for field, value in (("tenant", tenant), ("persona", persona), ("role", role)):
                check_safe_name(field, value)
            check_limit("rpm", rpm)
            check_limit("tpm", tpm)
        except ValueError as exc:
            raise InvalidKeyArgument(str(exc)) from None
        if name is not None and not _NAME_RE.fullmatch(name):
            raise InvalidKeyArgument("name must be 1-200 characters without control characters")
        if expires_at is not None and expires_at.tzinfo is None:
            raise InvalidKeyArgument("expires_at must be an aware datetime")
        secret = secrets.token_urlsafe(32)
        digest = hashlib.sha256(secret.encode()).hexdigest()

        def insert(conn: Conn) -> str:
            while True:  # a key id collision (1 in 2**64 per pair) just draws another
                key_id = secrets.token_hex(8)
                try:
                    with conn.transaction():
                        conn.execute(
                            "INSERT INTO api_keys (key_id, secret_sha256, tenant, persona, role,"
                            " name, expires_at, rpm_limit, tpm_limit)"
                            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                            (key_id, digest, tenant, persona, role, name, expires_at, rpm, tpm),
                        )
                except errors.UniqueViolation:
                    continue
                return key_id

        key_id = self._run(insert, retry=False)
        self._forget(key_id)
        return key_id, f"{KEY_PREFIX}{key_id}-{secret}"

    def revoke(self, key_id: str) -> bool:
        """Revoke a key; ``False`` when no active key has this id (unknown or already revoked).

        Takes effect at once in this process, within ``ttl_s`` in others.
        """
        if not _KEY_ID_RE.fullmatch(key_id):
            raise InvalidKeyArgument("a key id is 16 lowercase hex characters (see `keys list`)")

        def update(conn: Conn) -> bool:
            done = conn.execute(
                "UPDATE api_keys SET revoked_at = now() WHERE key_id = %s AND revoked_at IS NULL"
                " RETURNING key_id",
                (key_id,),
            ).fetchone()
            return done is not None

        revoked = self._run(update, retry=False)
        self._forget(key_id)
        return revoked

    def set_limits(
        self, key_id: str, **changes: int | None
    ) -> tuple[int | None, int | None] | None:
        """Change a key's rate limits in one statement: ``rpm`` and/or ``tpm`` (requests and
        tokens per minute; None lifts that limit; one not given stays as it is). The limits
        it then has, ``(rpm, tpm)``; None when no active key has this id. Takes effect at
        once in this process, within ``ttl_s`` in others."""
        if not _KEY_ID_RE.fullmatch(key_id):
            raise InvalidKeyArgument("a key id is 16 lowercase hex characters (see `keys list`)")
        if unknown := set(changes) - {"rpm", "tpm"}:
            raise InvalidKeyArgument(f"no such limit: {', '.join(sorted(unknown))}")
        try:
            for name, value in changes.items():
                check_limit(name, value)
        except ValueError as exc:
            raise InvalidKeyArgument(str(exc)) from None
        params = {
            "key_id": key_id,
            "set_rpm": "rpm" in changes,
            "rpm": changes.get("rpm"),
            "set_tpm": "tpm" in changes,
            "tpm": changes.get("tpm"),
        }

        def update(conn: Conn) -> tuple[int | None, int | None] | None:
            row = conn.execute(
                "UPDATE api_keys SET"
                " rpm_limit = CASE WHEN %(set_rpm)s THEN %(rpm)s::integer ELSE rpm_limit END,"
                " tpm_limit = CASE WHEN %(set_tpm)s THEN %(tpm)s::integer ELSE tpm_limit END"
                " WHERE key_id = %(key_id)s AND revoked_at IS NULL"
                " RETURNING rpm_limit, tpm_limit",
                params,
            ).fetchone()
            return None if row is None else (row[0], row[1])

        limits = self._run(update, retry=False)
        self._forget(key_id)
        return limits

    def list(self, tenant: str | None = None) -> builtins.list[ApiKeyInfo]:
        """Every key (of ``tenant`` when given), oldest first; secrets are never stored."""

        def select(conn: Conn) -> builtins.list[ApiKeyInfo]:
            rows = conn.execute(
                "SELECT key_id, tenant, persona, role, name, created_at, expires_at, revoked_at,"
                " rpm_limit, tpm_limit FROM api_keys"
                " WHERE %(tenant)s::text IS NULL OR tenant = %(tenant)s"
                " ORDER BY created_at, key_id",
                {"tenant": tenant},
            ).fetchall()
            return [ApiKeyInfo(*row) for row in rows]

        return self._run(select, retry=True)

    def close(self) -> None:
        """Close the database connection (a later call reopens it)."""
        with self._db_lock:
            self._drop()

    # -- connection -------------------------------------------------------------------------

    def _run(self, work: Callable[[Conn], T], *, retry: bool) -> T:
        """Run ``work`` on the connection under its lock; reconnect once when it broke."""
        with self._db_lock:
            for attempt in (1, 2):
                try:
                    return work(self._connection())
                except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                    self._drop()
                    if attempt == 2 or not retry:
                        raise KeyStoreUnavailable.from_error(exc) from exc
            raise AssertionError("unreachable")

    def _connection(self) -> Conn:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if time.monotonic() < self._connect_again_at:
            raise KeyStoreUnavailable("PostgreSQL unavailable: the last connect failed just now")
        try:
            self._conn = psycopg.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=max(1, round(self._connect_timeout_s)),
                options=f"-c statement_timeout={self._statement_timeout_ms}",
            )
        except psycopg.Error as exc:
            self._connect_again_at = time.monotonic() + _RETRY_CONNECT_AFTER_S
            raise KeyStoreUnavailable.from_error(exc) from exc
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None

    def __enter__(self) -> ApiKeyStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
