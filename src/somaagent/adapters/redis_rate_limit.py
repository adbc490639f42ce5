"""Rate limits in Redis (of API keys, tenants, models): one Lua script to admit a request,
one to settle it, one to withdraw it.

The scripts (``adapters/lua/rate_admit.lua``, ``rate_settle.lua``, ``rate_withdraw.lua``)
read the server's clock (``TIME``), so every gateway replica counts on one clock, and each
decision is atomic: N replicas share one limit exactly. Per scope (a key id,
``tenant:<tenant>``, ``model:<id>``), four keys hash-tagged ``{key:<scope>}`` (one
Redis Cluster slot): the admitted requests and the settled calls of the window (sorted by
time), the token holds of calls in flight (sorted by expiry), and their amounts with the
two running totals. Every key expires once idle for a window plus the hold lifetime.

One auto-pipelined connection of its own (``adapters.resp``). Connection and timeout errors
raise ``RateLimitUnavailable``.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from somaagent.adapters.resp import RespClient, Script, unavailable_as
from somaagent.domain.rate_limits import RateDecision, RateLimits

__all__ = ["RateLimitUnavailable", "RedisRateLimiter", "rate_keys"]

_STATUS: dict[int, Any] = {1: "admitted", 2: "requests", 3: "tokens", 4: "too_large"}


class RateLimitUnavailable(Exception):
    """Redis cannot be reached (or is loading): the limits cannot be checked."""


def rate_keys(key_id: str) -> list[str]:
    """The four Redis keys of one API key's limits (see ``rate_admit.lua``)."""
    tag = f"soma:{{key:{key_id}}}:rl"
    return [f"{tag}:requests", f"{tag}:settled", f"{tag}:held", f"{tag}:tokens"]


def _left(value: Any) -> int | None:
    number = int(value)
    return None if number == -1 else number


class RedisRateLimiter:
    """Admit and settle requests against API keys' limits (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        window_s: float = 60.0,
        hold_s: float = 600.0,
        timeout_s: float = 2.0,
        defer_s: float = 0.002,
    ) -> None:
        self._resp = RespClient(url, timeout_s=timeout_s)
        self._window_arg = str(round(window_s * 1000))
        self._hold_arg = str(round(hold_s * 1000))
        self._defer_s = defer_s
        self._admit = Script.packaged("rate_admit.lua")
        self._settle = Script.packaged("rate_settle.lua")
        self._withdraw = Script.packaged("rate_withdraw.lua")

    async def admit(
        self, key_id: str, hold_id: str, limits: RateLimits, tokens: int
    ) -> RateDecision:
        """Count one request of ``key_id`` holding ``tokens`` (its worst case), or refuse it
        without counting anything."""
        args = [
            hold_id,
            str(-1 if limits.rpm is None else limits.rpm),
            str(-1 if limits.tpm is None else limits.tpm),
            str(tokens),
            self._window_arg,
            self._hold_arg,
        ]
        reply = await self._call(self._resp.run_script(self._admit, rate_keys(key_id), args))
        return RateDecision(
            _STATUS[int(reply[0])],
            retry_ms=int(reply[1]),
            requests_left=_left(reply[2]),
            tokens_left=_left(reply[3]),
        )

    def settle(self, key_id: str, hold_id: str, tokens: int) -> Awaitable[bool]:
        """Replace the request's hold by the ``tokens`` it used (0: release it). Queued on
        the connection before this returns (when connected), so any admission issued after
        it sees it; it may wait a moment (``defer_s``) to share a write with the next
        command. The awaitable says False when the hold had lapsed."""
        keys = rate_keys(key_id)[1:]
        args = [hold_id, str(tokens), self._window_arg, self._hold_arg]
        return self._settled(
            self._resp.submit_script(self._settle, keys, args, defer_s=self._defer_s)
        )

    def withdraw(self, key_id: str, hold_id: str) -> Awaitable[bool]:
        """Take an admitted request back out of ``key_id``'s window (another of its scopes
        refused it): it no longer counts as a request, and its token hold is gone. Queued
        before this returns, as ``settle``. The awaitable says False when it no longer
        counted."""
        work = self._resp.submit_script(self._withdraw, rate_keys(key_id), [hold_id])
        return self._settled(work)

    async def _settled(self, work: Awaitable[Any]) -> bool:
        return bool(await self._call(work))

    @staticmethod
    def _call(work: Awaitable[Any]) -> Awaitable[Any]:
        return unavailable_as(work, RateLimitUnavailable)

    async def aclose(self) -> None:
        """Close the connection (pending calls fail with ``RateLimitUnavailable``)."""
        await self._resp.aclose()
