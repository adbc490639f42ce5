"""Session-wide fixtures: the real LOCAL stack, started once through ``Supervisor.up``.

The stack runs from its own state directory and port base (``SOMA_TEST_PORT_BASE``,
default 28000) so it never collides with a developer's ``soma up`` on 18000.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from somaagent.settings import Settings, load_settings
from somaagent.stack import Supervisor

ROOT = Path(__file__).resolve().parents[1]
TEST_STATE_ROOT = ROOT / ".soma-test"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Apply the layer mark from the directory a test lives in."""
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT / "tests").parts
        if parts and parts[0] in ("unit", "integration", "e2e"):
            item.add_marker(getattr(pytest.mark, parts[0]))


def make_settings(name: str, port_base: int, **extra: str) -> Settings:
    """Settings for a test stack in ``.soma-test/<name>`` (traversable by the postgres user)."""
    state = TEST_STATE_ROOT / name
    env = {
        **os.environ,
        "SOMA_STATE_DIR": str(state),
        "SOMA_PORT_BASE": str(port_base),
        **extra,
    }
    return load_settings(env)


def fresh_state(settings: Settings) -> None:
    """Stop whatever a crashed earlier run left from this state dir, then wipe it."""
    if settings.state_dir.exists():
        Supervisor(settings).down()
        shutil.rmtree(settings.state_dir)
    TEST_STATE_ROOT.mkdir(exist_ok=True)
    TEST_STATE_ROOT.chmod(0o755)


@contextmanager
def private_stack(name: str, port_base: int, only: list[str], **extra: str) -> Iterator[Supervisor]:
    """Some components of a stack of the test's own (it may stop them), stopped at the end."""
    settings = make_settings(name, port_base, **extra)
    fresh_state(settings)
    supervisor = Supervisor(settings)
    supervisor.up(only=only)
    try:
        yield supervisor
    finally:
        supervisor.down()


@pytest.fixture(scope="session")
def stack_settings() -> Settings:
    base = int(os.environ.get("SOMA_TEST_PORT_BASE", "28000"))
    return make_settings(f"session-{base}", base)


@pytest.fixture(scope="session")
def stack_supervisor(stack_settings: Settings) -> Iterator[Supervisor]:
    """The supervisor of the session stack: tests that restart a component use this one, so
    the processes it starts are reaped by the same object at the end."""
    fresh_state(stack_settings)
    supervisor = Supervisor(stack_settings, progress=print)
    supervisor.up()
    try:
        yield supervisor
    finally:
        supervisor.down()


@pytest.fixture(scope="session")
def stack(stack_settings: Settings, stack_supervisor: Supervisor) -> Settings:
    """The whole LOCAL stack, up for the test session, stopped by PID at the end."""
    return stack_settings
