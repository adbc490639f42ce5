"""``DaemonThreads``: the worker's writer runs each write in a daemon thread of its own."""

from __future__ import annotations

import threading

import pytest

from somaagent.service.worker import DaemonThreads


def test_a_call_runs_in_a_named_daemon_thread_and_its_result_comes_back() -> None:
    seen: dict[str, object] = {}

    def write(a: int, *, b: int) -> int:
        me = threading.current_thread()
        seen.update(name=me.name, daemon=me.daemon, other=me is not threading.main_thread())
        return a + b

    future = DaemonThreads("telemetry-writer").submit(write, 2, b=3)
    assert future.result(timeout=5) == 5
    assert seen == {"name": "telemetry-writer", "daemon": True, "other": True}


def test_an_exception_is_handed_to_whoever_waits() -> None:
    def write() -> None:
        raise OSError("sink down")

    future = DaemonThreads("w").submit(write)
    with pytest.raises(OSError, match="sink down"):
        future.result(timeout=5)


def test_calls_submitted_one_after_another_each_get_their_own_thread() -> None:
    gate = threading.Event()
    pool = DaemonThreads("w")
    first = pool.submit(gate.wait, 5)
    second = pool.submit(lambda: threading.get_ident())
    assert isinstance(second.result(timeout=5), int)  # not queued behind the first
    assert not first.done()
    gate.set()
    assert first.result(timeout=5) is True
