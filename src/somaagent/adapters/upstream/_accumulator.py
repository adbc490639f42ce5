"""A caller-owned record of a stream in progress, so an interrupted stream is still accounted."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from somaagent.adapters.upstream._errors import UpstreamError
from somaagent.adapters.upstream._types import (
    ChoiceOutput,
    Measurements,
    StreamSummary,
    cached_tokens,
    choice_index,
    compute_ms,
    reported_usage,
)

__all__ = ["StreamAccumulator"]


@dataclass(slots=True)
class _Choice:
    parts: list[str] = field(default_factory=list)
    deltas: int = 0
    finish_reason: str | None = None


class StreamAccumulator:
    """Everything a stream has delivered so far, updated as each chunk arrives.

    Create one per stream, pass it to :meth:`UpstreamClient.stream`, and keep it: if the
    consumer stops early (the generator is closed or its task cancelled), the generator never
    yields its summary, but :meth:`summary` here still gives the partial text, the number of
    content deltas and ``interrupted=True``.
    """

    def __init__(self) -> None:
        self.client_requested_usage = False
        self.started_at: float | None = None
        self.first_token_at: float | None = None
        self.ended_at: float | None = None
        self.model: str | None = None
        self.usage: dict[str, Any] | None = None
        self.timings: dict[str, Any] | None = None
        self.completed = False
        self.interrupted = False
        self.upstream_closed = False
        self.error: UpstreamError | None = None
        self._choices: dict[int, _Choice] = {}

    def start(self) -> None:
        """Mark the moment the request is sent (all durations are measured from it)."""
        self.started_at = time.perf_counter()

    def observe(self, data: Mapping[str, Any]) -> None:
        """Fold one parsed ``chat.completion.chunk`` into the record."""
        if isinstance(data.get("model"), str):
            self.model = data["model"]
        if isinstance(data.get("usage"), dict):
            self.usage = data["usage"]
        if isinstance(data.get("timings"), dict):
            self.timings = data["timings"]
        for position, choice in enumerate(data.get("choices") or ()):
            if isinstance(choice, Mapping):
                self._observe_choice(choice_index(choice, position), choice)

    def _observe_choice(self, index: int, choice: Mapping[str, Any]) -> None:
        tally = self._choices.setdefault(index, _Choice())
        delta = choice.get("delta")
        if isinstance(delta, Mapping):
            text = [
                part
                for part in (delta.get("reasoning_content"), delta.get("content"))
                if isinstance(part, str) and part
            ]
            if text or delta.get("tool_calls"):
                tally.parts.extend(text)
                tally.deltas += 1
                if self.first_token_at is None:
                    self.first_token_at = time.perf_counter()
        if isinstance(choice.get("finish_reason"), str):
            tally.finish_reason = choice["finish_reason"]

    def end(self, *, completed: bool = False, error: UpstreamError | None = None) -> None:
        """Record how the stream ended: ``completed``, failed with ``error``, else interrupted."""
        if self.ended_at is None:
            self.ended_at = time.perf_counter()
        self.completed = completed
        self.error = error
        self.interrupted = not completed and error is None

    @property
    def content_deltas(self) -> int:
        """Chunks that carried generated text so far (each holds at least one token)."""
        return sum(choice.deltas for choice in self._choices.values())

    @property
    def text(self) -> str:
        """The text generated so far, every choice in index order (as ``summary()`` has
        it in ``completion_text``)."""
        return "".join("".join(tally.parts) for _, tally in sorted(self._choices.items()))

    @property
    def finished_choices(self) -> bool:
        """Every choice seen so far has a finish reason (and there was at least one)."""
        return bool(self._choices) and all(c.finish_reason for c in self._choices.values())

    def summary(self) -> StreamSummary:
        """A snapshot: measurements, reported usage (if any) and the text generated so far."""
        started = self.started_at if self.started_at is not None else time.perf_counter()
        ended = self.ended_at if self.ended_at is not None else time.perf_counter()
        choices = tuple(
            ChoiceOutput(
                index=index,
                text="".join(tally.parts),
                deltas=tally.deltas,
                finish_reason=tally.finish_reason,
            )
            for index, tally in sorted(self._choices.items())
        )
        first = self.first_token_at
        return StreamSummary(
            measurements=Measurements(
                latency_ms=(ended - started) * 1000.0,
                time_to_first_token_ms=None if first is None else (first - started) * 1000.0,
                queue_delay_ms=None,
                compute_ms=compute_ms(self.timings),
                cached_tokens=cached_tokens(self.usage, self.timings),
                finish_reason=choices[0].finish_reason if choices else None,
                model=self.model,
            ),
            usage=reported_usage(self.usage, self.timings),
            choices=choices,
            client_requested_usage=self.client_requested_usage,
            interrupted=self.interrupted,
            completed=self.completed,
            error=self.error,
        )
