"""Policy verdicts from OPA: the engine in-process (LOCAL) or an OPA server's REST API.

Both evaluate the same ``.rego`` files (a :class:`PolicyBundle`) and return the same
:class:`~somaagent.domain.policy.Verdict`. Nothing is compiled, loaded or connected at import.

In-process: ``opa-golib-python-bindings`` embeds OPA's Go engine (``rego`` v1) through
ctypes. It keeps one prepared query per query string, so a decision is compiled once and
each evaluation only converts the input and runs the interpreter. Measured on the LOCAL
2-core host with the gateway policy and a two-budget, two-candidate input: about 1 ms; a
third of it is the bridge turning the input JSON into OPA's values (it round-trips it
through Go's JSON twice), the rest is the interpreter, whose every rule call and built-in
costs microseconds. That is too slow to run on the event loop, so :meth:`aevaluate` runs
in the engine's own worker thread (ctypes releases the GIL for the call). The engine
serialises its evaluations (a second engine on the same 2 cores did not add throughput).

REST: ``POST <base>/v1/data/<path>`` with ``{"input": ...}`` answers ``{"result": ...}``, or
``{}`` when the document is undefined (OPA's Data API; ``soma policy serve`` implements the
same subset on the in-process engine).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import aiohttp
import orjson

from somaagent.domain.policy import PolicyError, Verdict, parse_verdict
from somaagent.domain.policy_reuse import Reuse, parse_decision

__all__ = [
    "DECISION_PATH",
    "REUSE_PATH",
    "InProcessPolicyEngine",
    "PolicyBundle",
    "PolicyUnavailable",
    "PolicyUndefined",
    "RestPolicyEngine",
    "bundle_version",
    "constitution_hash",
    "load_policy_bundle",
    "split_path",
]

DECISION_PATH = "soma/gateway/verdict"
# The verdict together with the conditions under which it may be reused (domain.policy_reuse).
REUSE_PATH = "soma/gateway/decision"
CONSTITUTION = "constitution.md"
_SEGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ERROR_COUNT = re.compile(r"^(bundle activation failed: )?\d+ errors? occurred:\s*")


class PolicyUnavailable(RuntimeError):
    """The engine could not be reached / evaluated in time."""


class PolicyUndefined(PolicyError):
    """The queried document is undefined for this input (no rule produced a value)."""


@dataclass(frozen=True)
class PolicyBundle:
    """Rego sources by path relative to the policy directory, and their version.

    ``version`` is :func:`bundle_version` of ``files``. ``root`` (the directory the files
    were read from, when they were) only makes compiler messages name real paths.
    """

    files: Mapping[str, str]
    version: str
    root: Path | None = field(default=None, compare=False)


def bundle_version(files: Mapping[str, str]) -> str:
    """sha256 hex over the files sorted by name, each as ``<len name>:<len text>:name text``
    (UTF-8 byte lengths), so no two different bundles can hash the same stream."""
    digest = hashlib.sha256()
    for name in sorted(files):
        name_b, text_b = name.encode(), files[name].encode()
        digest.update(f"{len(name_b)}:{len(text_b)}:".encode() + name_b + text_b)
    return digest.hexdigest()


def load_policy_bundle(policy_dir: Path) -> PolicyBundle:
    """Every ``*.rego`` under ``policy_dir`` (recursively), named by relative POSIX path.

    Raises :class:`PolicyError` when the directory is missing, holds no ``.rego`` file, or a
    file cannot be read as UTF-8.
    """
    if not policy_dir.is_dir():
        raise PolicyError(f"policy directory {policy_dir} does not exist")
    files: dict[str, str] = {}
    for path in sorted(policy_dir.rglob("*.rego")):
        if not path.is_file():
            continue
        try:
            files[path.relative_to(policy_dir).as_posix()] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyError(f"cannot read policy file {path}: {exc}") from exc
    if not files:
        raise PolicyError(f"no .rego files under {policy_dir}")
    return PolicyBundle(MappingProxyType(files), bundle_version(files), policy_dir)


def constitution_hash(policy_dir: Path) -> str:
    """sha256 hex of ``policy_dir/constitution.md`` (its bytes as stored)."""
    path = policy_dir / CONSTITUTION
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise PolicyError(f"cannot read the constitution {path}: {exc}") from exc


def split_path(path: str) -> list[str]:
    """The segments of a document path (``soma/gateway/verdict``); each must be a Rego
    identifier. Raises :class:`PolicyError` otherwise."""
    segments = path.strip("/").split("/")
    for segment in segments:
        if not _SEGMENT.fullmatch(segment):
            raise PolicyError(f"invalid document path {path!r}: {segment!r} is not an identifier")
    return segments


def _bindings() -> Any:
    """The ``opa_bindings`` module (imported on first engine, not at import time)."""
    try:
        import opa_bindings  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise PolicyUnavailable(
            "the in-process OPA engine needs opa-golib-python-bindings==0.4.4"
        ) from exc
    return opa_bindings


def _compile_message(message: str) -> str:
    return _ERROR_COUNT.sub("", message.strip())


class InProcessPolicyEngine:
    """OPA's engine in this process, compiled from ``bundle`` at construction.

    Raises :class:`PolicyError` (naming ``file:line``) when a file does not parse or the
    bundle does not compile. Thread-safe: evaluations are serialised by the engine's lock.
    ``path`` is the decision :meth:`evaluate` reads. After :meth:`close`, evaluations raise
    :class:`PolicyUnavailable`.
    """

    def __init__(
        self,
        bundle: PolicyBundle,
        *,
        path: str = DECISION_PATH,
        decision_path: str = REUSE_PATH,
    ) -> None:
        self.bundle = bundle
        self.path = path
        self._dotted = ".".join(split_path(path))
        self._decision = ".".join(split_path(decision_path))
        self._opa = _bindings()
        self._engine = self._compile(bundle)
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="opa-eval")

    def _compile(self, bundle: PolicyBundle) -> Any:
        engine = self._opa.OpaEngine()
        engine.print_handler = lambda message, location: None  # no print() to stderr
        try:
            for name in sorted(bundle.files):
                module = str(bundle.root / name) if bundle.root else name
                engine.add_policy(module, bundle.files[name])
            # Preparing the decision query compiles every module (type checks included)
            # and leaves the prepared query cached for the first real call.
            engine.eval_query("data." + self._dotted)
        except self._opa.OpaError as exc:
            if exc.code in ("parse_error", "prepare_error"):
                engine.close()
                message = _compile_message(exc.message)
                raise PolicyError(f"policy does not compile: {message}") from None
            if exc.code != "eval_error":  # without input a decision may fail; it compiled
                engine.close()
                raise PolicyError(f"policy engine: {exc}") from None
        return engine

    def document(self, path: str, input_doc: object | None = None) -> Any:
        """The value of ``data.<path>`` (``a/b/c`` form) for ``input_doc`` (``None`` = no
        input). Raises :class:`PolicyUndefined` when it is undefined, :class:`PolicyError`
        when evaluation fails, :class:`PolicyUnavailable` once closed."""
        return self._evaluate(".".join(split_path(path)), input_doc)

    def _evaluate(self, dotted: str, input_doc: object | None) -> Any:
        if self._closed:
            raise PolicyUnavailable("policy engine is closed")
        try:
            return self._engine.eval_document(dotted, input_doc)
        except self._opa.OpaUndefinedError:
            raise PolicyUndefined(f"data.{dotted} is undefined for this input") from None
        except self._opa.OpaError as exc:
            if exc.code in ("closed", "invalid_handle"):  # close() ran meanwhile
                raise PolicyUnavailable("policy engine is closed") from None
            raise PolicyError(f"policy evaluation failed: {exc.message}") from None
        except (TypeError, ValueError) as exc:
            raise PolicyError(f"policy input is not JSON: {exc}") from None

    def evaluate(self, input_doc: Mapping[str, Any]) -> Verdict:
        """The verdict for ``input_doc`` (blocking; safe from any thread)."""
        return parse_verdict(self._evaluate(self._dotted, input_doc))

    def decide(self, input_doc: Mapping[str, Any]) -> tuple[Verdict, Reuse | None]:
        """The verdict for ``input_doc`` and when it may be reused (blocking)."""
        return parse_decision(self._evaluate(self._decision, input_doc))

    async def _in_thread(self, dotted: str, input_doc: object | None) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._evaluate, dotted, input_doc)
        except RuntimeError as exc:  # the executor was shut down by close()
            if self._closed:
                raise PolicyUnavailable("policy engine is closed") from exc
            raise

    async def adocument(self, path: str, input_doc: object | None = None) -> Any:
        """:meth:`document` in one of this engine's worker threads."""
        return await self._in_thread(".".join(split_path(path)), input_doc)

    async def aevaluate(self, input_doc: Mapping[str, Any]) -> Verdict:
        """:meth:`evaluate` in one of this engine's worker threads (off the event loop)."""
        return parse_verdict(await self._in_thread(self._dotted, input_doc))

    async def adecide(self, input_doc: Mapping[str, Any]) -> tuple[Verdict, Reuse | None]:
        """:meth:`decide` in one of this engine's worker threads."""
        return parse_decision(await self._in_thread(self._decision, input_doc))

    def close(self) -> None:
        """Release the engine; later evaluations raise :class:`PolicyUnavailable`.

        An evaluation already running finishes (the Go engine keeps what it uses)."""
        self._closed = True
        self._executor.shutdown(wait=False)
        self._engine.close()

    def __enter__(self) -> InProcessPolicyEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _orjson_default(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, tuple | frozenset | set):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _data_url(base_url: str, path: str) -> str:
    """OPA's Data API URL of the document at ``path`` (``a/b/c`` form)."""
    return f"{base_url.rstrip('/')}/v1/data/{'/'.join(split_path(path))}"


class RestPolicyEngine:
    """Verdicts from an OPA server (``POST <base_url>/v1/data/<path>``), over aiohttp.

    One pooled keep-alive session, created on first use inside the running event loop
    (nothing connects at construction); idle connections are dropped after 4 s, before
    servers that close idle ones at 5 s (uvicorn) do. Each call is bounded by ``timeout_s``
    in total. Errors: :class:`PolicyUnavailable` for a refused connection, a timeout or a
    5xx answer; :class:`PolicyError` for a 4xx answer, an undefined document (``{}``) or a
    result that is not a verdict. Use from one event loop.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float,
        path: str = DECISION_PATH,
        decision_path: str = REUSE_PATH,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.url = _data_url(base_url, path)
        self.decision_url = _data_url(base_url, decision_path)
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _client(self) -> aiohttp.ClientSession:
        if self._closed:
            raise PolicyUnavailable("policy client is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=4.0),
                headers={"Content-Type": "application/json"},
            )
        return self._session

    async def adocument(self, input_doc: object, *, url: str | None = None) -> Any:
        """The raw ``result`` for ``input_doc`` (at ``url``, by default the verdict's);
        :class:`PolicyUndefined` when absent."""
        url = url or self.url
        try:
            body = orjson.dumps({"input": input_doc}, default=_orjson_default)
        except TypeError as exc:
            raise PolicyError(f"policy input is not JSON: {exc}") from None
        session = self._client()
        try:
            async with asyncio.timeout(self.timeout_s):
                async with session.post(url, data=body) as response:
                    status, raw = response.status, await response.read()
        except TimeoutError:
            message = f"OPA at {url}: no answer within {self.timeout_s} s"
            raise PolicyUnavailable(message) from None
        except aiohttp.ClientError as exc:
            raise PolicyUnavailable(f"OPA at {url}: {exc or type(exc).__name__}") from exc
        snippet = raw[:200].decode(errors="replace")
        if status >= 500:
            raise PolicyUnavailable(f"OPA at {url} answered {status}: {snippet}")
        if status != 200:
            raise PolicyError(f"OPA at {url} rejected the query ({status}): {snippet}")
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise PolicyError(f"OPA at {url} answered with non-JSON: {snippet}") from None
        if not isinstance(answer, dict):
            raise PolicyError(f"OPA at {url} answered with a non-object: {snippet}")
        if "result" not in answer:
            raise PolicyUndefined(f"OPA at {url}: the document is undefined for this input")
        return answer["result"]

    async def aevaluate(self, input_doc: Mapping[str, Any]) -> Verdict:
        """The verdict for ``input_doc``."""
        return parse_verdict(await self.adocument(input_doc))

    async def adecide(self, input_doc: Mapping[str, Any]) -> tuple[Verdict, Reuse | None]:
        """The verdict for ``input_doc`` and when it may be reused."""
        return parse_decision(await self.adocument(input_doc, url=self.decision_url))

    async def aclose(self) -> None:
        """Close the pooled connections; later calls raise :class:`PolicyUnavailable`."""
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> RestPolicyEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
