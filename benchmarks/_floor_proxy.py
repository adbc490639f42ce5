"""The least an OpenAI-compatible gateway can do per call, on the gateway's own server stack.

A raw ASGI app (no framework) under the same uvicorn + httptools + uvloop the gateway runs
on, with the gateway's own lean upstream pool (``Http1Pool``) and Redis client
(``RespClient``). Per ``POST /v1/chat/completions`` it reads and parses the JSON body,
checks that it has ``messages``, optionally runs one Redis script (``--redis URL``: an
``INCRBY`` of one counter, standing in for a budget hold: the one round trip a budget
that really holds needs before the upstream is called), forwards the body to the upstream
and answers with the upstream's body. No routing, no policy, no telemetry, no settle.

``c1_floor.py`` measures it next to the gateway and LiteLLM: what any design on this stack
adds at best, i.e. how much of the gateway's added latency is its own work.

Run: python benchmarks/_floor_proxy.py --port P --upstream http://127.0.0.1:U [--redis URL]
"""

from __future__ import annotations

import argparse
from typing import Any

import orjson
import uvicorn

from somaagent.adapters.resp import RespClient, Script
from somaagent.adapters.upstream._http1 import Http1Pool

_HOLD = Script.of("return redis.call('INCRBY', KEYS[1], ARGV[1])")
_JSON = [(b"content-type", b"application/json")]


class FloorProxy:
    def __init__(self, upstream: str, redis_url: str | None) -> None:
        self.upstream = upstream.rstrip("/")
        self.url = self.upstream + "/v1/chat/completions"
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        self.redis_url = redis_url
        self.pool: Http1Pool | None = None
        self.redis: RespClient | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/v1/models":
            await self._answer(send, 200, b'{"object":"list","data":[]}')
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            await self._answer(send, 400, b'{"error":{"message":"invalid JSON"}}')
            return
        if not isinstance(request, dict) or not request.get("messages"):
            await self._answer(send, 400, b'{"error":{"message":"messages required"}}')
            return
        if self.redis_url is not None:
            if self.redis is None:
                self.redis = RespClient(self.redis_url)
            await self.redis.run_script(_HOLD, ["floor:held"], ["1"])
        if self.pool is None:
            self.pool = Http1Pool(self.upstream)
        path = "/v1/chat/completions"
        status, answer = await self.pool.post(self.url, path, body, self.headers, 30.0)
        await self._answer(send, status, answer)

    @staticmethod
    async def _answer(send: Any, status: int, body: bytes) -> None:
        headers = [*_JSON, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--redis", default=None)
    ns = parser.parse_args()
    uvicorn.run(
        FloorProxy(ns.upstream, ns.redis),
        host="127.0.0.1",
        port=ns.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
