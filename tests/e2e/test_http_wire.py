"""The running gateway on the wire: keep-alive, pipelining, ``Expect: 100-continue``, HEAD.

Its HTTP protocol holds each response's head for the body's write (see
``entrypoints/http_protocol.py``); these are the cases where a head has no body right
behind it, or several responses share a connection. Raw sockets, no HTTP client library.
"""

from __future__ import annotations

import json
import socket

from somaagent.settings import Settings


class Wire:
    def __init__(self, stack: Settings) -> None:
        self.sock = socket.create_connection((stack.bind_host, stack.gateway_port), timeout=10)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, "connection closed by the gateway"
        self.buf += chunk

    def head(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        raw, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status_line, *lines = raw.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers

    def response(self, *, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        status, headers = self.head()
        if head_only:
            return status, headers, b""
        length = int(headers["content-length"])
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def close(self) -> None:
        self.sock.close()


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: gateway\r\n\r\n".encode()


def test_pipelined_requests_get_their_answers_in_order(stack: Settings) -> None:
    wire = Wire(stack)
    try:
        wire.send(_get("/v1/models") + _get("/no/such/path") + _get("/v1/models"))
        answers = [wire.response() for _ in range(3)]
        assert [status for status, _, _ in answers] == [200, 404, 200]
        assert json.loads(answers[0][2])["object"] == "list"
        assert answers[0][2] == answers[2][2]
        wire.send(_get("/v1/models"))  # the connection is still usable afterwards
        assert wire.response()[0] == 200
    finally:
        wire.close()


def test_unknown_paths_and_methods_get_openai_error_objects(stack: Settings) -> None:
    wire = Wire(stack)
    try:
        wire.send(_get("/v1/no-such-endpoint") + _get("/v1/chat/completions"))
        status, headers, body = wire.response()
        assert status == 404 and headers["content-type"] == "application/json"
        error = json.loads(body)["error"]
        assert error["code"] == "not_found" and "GET /v1/no-such-endpoint" in error["message"]
        status, headers, body = wire.response()
        assert status == 405 and headers["allow"] == "POST"
        error = json.loads(body)["error"]
        assert error["code"] == "method_not_allowed" and error["type"] == "invalid_request_error"
    finally:
        wire.close()


def test_expect_100_continue_then_the_answer(stack: Settings) -> None:
    body = b"{not json"
    wire = Wire(stack)
    try:
        wire.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\n"
            b"content-type: application/json\r\nexpect: 100-continue\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
        )
        status, _ = wire.head()  # no body follows this head until the client sends its own
        assert status == 100
        wire.send(body)
        status, headers, answer = wire.response()
        assert status == 400, answer
        assert headers["content-type"].startswith("application/json")
        assert "error" in json.loads(answer)
    finally:
        wire.close()


def test_head_request_gets_its_headers_without_a_body(stack: Settings) -> None:
    wire = Wire(stack)
    try:
        wire.send(b"HEAD /v1/models HTTP/1.1\r\nhost: gateway\r\n\r\n")
        status, headers, _ = wire.response(head_only=True)
        assert status == 200
        assert int(headers["content-length"]) > 0
        wire.send(_get("/v1/models"))  # nothing of a body was sent: the next answer parses
        status, _, body = wire.response()
        assert status == 200
        assert json.loads(body)["object"] == "list"
    finally:
        wire.close()
