"""What an upstream call returns: usage, measurements, stream chunks and the stream summary."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from somaagent.adapters.upstream._errors import UpstreamError

__all__ = [
    "ChoiceOutput",
    "Measurements",
    "StreamChunk",
    "StreamEvent",
    "StreamSummary",
    "UpstreamResult",
    "Usage",
    "UsageMethod",
    "UsageSource",
    "cached_tokens",
    "choice_index",
    "compute_ms",
    "reported_usage",
]

UsageSource = Literal["reported", "counted"]
UsageMethod = Literal["usage", "timings", "tokenizer"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """Token counts of one call and where they come from.

    ``source`` is what the event records: ``reported`` (the upstream's own numbers) or
    ``counted`` (ours). ``method`` is finer: the OpenAI ``usage`` object, llama-server's
    per-response ``timings`` (its own counters, sent even when ``usage`` is not), or our
    count with the upstream's tokenizer.
    """

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int | None
    source: UsageSource
    method: UsageMethod

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True, kw_only=True)
class Measurements:
    """Timing and bookkeeping of one call, as far as it is knowable from outside.

    ``queue_delay_ms`` stays ``None`` unless the upstream reports it (llama-server does not).
    ``compute_ms`` is llama-server's ``timings.prompt_ms + timings.predicted_ms`` when sent.
    """

    latency_ms: float
    time_to_first_token_ms: float | None
    queue_delay_ms: float | None
    compute_ms: float | None
    cached_tokens: int | None
    finish_reason: str | None
    model: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ChoiceOutput:
    """The generated text of one choice: what the token counter needs.

    ``deltas`` is the number of streamed chunks that carried text for this choice (``None``
    for a non-streamed answer); each holds at least one generated token.
    """

    index: int
    text: str
    deltas: int | None
    finish_reason: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamResult:
    """A non-streamed chat completion: the upstream's JSON and what we measured.

    ``usage`` is the upstream's report (``usage`` object, else ``timings``); ``None`` when it
    sent neither, in which case :meth:`UsageCounter.usage_for_result` counts.
    """

    status: int
    body: dict[str, Any]
    usage: Usage | None
    measurements: Measurements

    @property
    def choices(self) -> tuple[ChoiceOutput, ...]:
        outputs = []
        for position, choice in enumerate(self.body.get("choices") or ()):
            if not isinstance(choice, Mapping):
                continue
            message = choice.get("message") or {}
            text = "".join(
                part
                for part in (message.get("reasoning_content"), message.get("content"))
                if isinstance(part, str)
            )
            outputs.append(
                ChoiceOutput(
                    index=choice_index(choice, position),
                    text=text,
                    deltas=None,
                    finish_reason=choice.get("finish_reason"),
                )
            )
        return tuple(outputs)


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """One SSE ``data:`` payload, verbatim (``raw``) and parsed (``data``).

    ``more``: another chunk arrived in the same network read and follows at once, so a
    relay loses nothing by writing both together (nothing waits for it).
    """

    raw: bytes
    data: dict[str, Any]
    more: bool = False

    @property
    def usage_only(self) -> bool:
        """The trailing usage chunk (no choices): forward it only if the client asked."""
        return "usage" in self.data and not self.data.get("choices")

    def sse(self) -> bytes:
        """The chunk as an SSE event, ready to pass through unchanged."""
        return b"data: " + self.raw + b"\n\n"


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamSummary:
    """The state of a stream when it ended, normally or not.

    ``interrupted`` is true when the consumer went away (generator closed, task cancelled)
    before the upstream finished; ``completed`` when ``[DONE]`` (or the end of a stream that
    carried a finish reason) was reached; ``error`` is set when the upstream failed midway.
    ``usage`` is the upstream's report, if any.
    """

    measurements: Measurements
    usage: Usage | None
    choices: tuple[ChoiceOutput, ...]
    client_requested_usage: bool
    interrupted: bool
    completed: bool
    error: UpstreamError | None = None

    @property
    def content_deltas(self) -> int:
        return sum(choice.deltas or 0 for choice in self.choices)

    @property
    def completion_text(self) -> str:
        return "".join(choice.text for choice in self.choices)


StreamEvent = StreamChunk | StreamSummary


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _count(value: object) -> int | None:
    """A token count as an upstream reports it, if it is one (a non-negative integer)."""
    number = _int(value)
    return number if number is not None and number >= 0 else None


def choice_index(choice: Mapping[str, Any], position: int) -> int:
    """A choice's ``index``, or its position when the upstream left it out."""
    index = _int(choice.get("index"))
    return position if index is None else index


def cached_tokens(usage: object, timings: object) -> int | None:
    """``usage.prompt_tokens_details.cached_tokens``, else llama-server's ``timings.cache_n``."""
    if isinstance(usage, Mapping):
        details = usage.get("prompt_tokens_details")
        cached = _count(details.get("cached_tokens")) if isinstance(details, Mapping) else None
        if cached is not None:
            return cached
    if isinstance(timings, Mapping):
        return _count(timings.get("cache_n"))
    return None


def compute_ms(timings: object) -> float | None:
    """llama-server's compute time for one response: prompt evaluation plus generation."""
    if not isinstance(timings, Mapping):
        return None
    prompt, predicted = timings.get("prompt_ms"), timings.get("predicted_ms")
    if isinstance(prompt, int | float) and isinstance(predicted, int | float):
        total = float(prompt) + float(predicted)
        if math.isfinite(total) and prompt >= 0 and predicted >= 0:
            return total
    return None  # none, or not a duration: the call's measured time stands in


def reported_usage(usage: object, timings: object) -> Usage | None:
    """The upstream's own token counts: the ``usage`` object, else llama-server ``timings``.

    llama-server's ``timings`` (``cache_n + prompt_n`` prompt tokens, ``predicted_n``
    generated) are the counters ``usage`` is built from; they arrive in the last chunk of
    every stream, with or without ``include_usage``.
    """
    cached = cached_tokens(usage, timings)
    if isinstance(usage, Mapping):
        prompt = _count(usage.get("prompt_tokens"))
        completion = _count(usage.get("completion_tokens"))
        if prompt is not None and completion is not None:
            return Usage(
                prompt_tokens=prompt,
                completion_tokens=completion,
                # More cached than prompt tokens is no count of either: priced as uncached.
                cached_tokens=cached if cached is None or cached <= prompt else None,
                source="reported",
                method="usage",
            )
    if isinstance(timings, Mapping):
        fresh, predicted = _count(timings.get("prompt_n")), _count(timings.get("predicted_n"))
        if fresh is not None and predicted is not None:
            return Usage(
                prompt_tokens=fresh + (cached or 0),
                completion_tokens=predicted,
                cached_tokens=cached,
                source="reported",
                method="timings",
            )
    return None
