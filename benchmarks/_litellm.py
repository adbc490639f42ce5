"""The LiteLLM proxy as the peer baseline: its own virtualenv, a one-model config, argv.

The virtualenv is created once under ``.soma-bench/litellm-venv`` and reused while it runs on
the benchmark's own interpreter (both proxies measured on the same CPython build). The version
is pinned so every run measures the same proxy.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

__all__ = ["FEATURES_OFF", "FEATURES_ON", "PACKAGE", "command", "ensure_venv", "write_config"]

PACKAGE = "litellm[proxy]==1.106.2"

# What the measured proxy does per request and what it was told not to do.
FEATURES_ON = [
    "HTTP server: uvicorn, one worker, h11 parser (litellm[proxy] does not install httptools)",
    "router (simple-shuffle over one deployment, retries and fallbacks bookkeeping)",
    "in-memory cost calculation and x-litellm-* response headers",
    "default in-memory proxy hooks (parallel-request limiter, usage cache)",
]
FEATURES_OFF = [
    "auth (no master key: LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY, like our "
    "anonymous LOCAL caller)",
    "database (no DATABASE_URL: no virtual keys, no spend logs, no budgets)",
    "logging callbacks / telemetry export (none configured; telemetry: false)",
    "response cache (none configured)",
    "remote model cost map fetch (LITELLM_LOCAL_MODEL_COST_MAP=True)",
]


def ensure_venv(venv: Path, log_file: Path) -> str:
    """Create the virtualenv and install LiteLLM unless it is there; returns its version.

    Raises ``RuntimeError`` with the reason when it cannot be installed.
    """
    python = venv / "bin" / "python"
    if not (venv / "bin" / "litellm").exists() or _base(python) != _base(Path(sys.executable)):
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "ab") as out:
            steps = [
                [sys.executable, "-m", "venv", "--clear", str(venv)],
                [str(python), "-m", "pip", "install", "--quiet", PACKAGE],
            ]
            for step in steps:
                done = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, check=False)
                if done.returncode != 0:
                    tail = log_file.read_text(errors="replace")[-600:]
                    raise RuntimeError(f"{' '.join(step[:4])} failed ({done.returncode}): {tail}")
    probe = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        raise RuntimeError(f"litellm is not importable in {venv}: {probe.stderr[-400:]}")
    return probe.stdout.strip()


def _base(python: Path) -> str:
    """The interpreter a virtualenv's ``python`` runs on ("" when it does not run)."""
    probe = subprocess.run(
        [str(python), "-c", "import os, sys; print(os.path.realpath(sys._base_executable))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return probe.stdout.strip() if probe.returncode == 0 else ""


def write_config(path: Path, *, model: str, api_base: str) -> None:
    """One model name routed to the fixed upstream through LiteLLM's openai provider."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "model_list:\n"
        f"  - model_name: {model}\n"
        "    litellm_params:\n"
        f"      model: openai/{model}\n"
        f"      api_base: {api_base}\n"
        "      api_key: sk-bench-upstream\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )


def command(venv: Path, config: Path, *, host: str, port: int) -> tuple[list[str], dict[str, str]]:
    """argv and extra environment of a one-worker proxy."""
    argv = [
        str(venv / "bin" / "litellm"),
        "--config",
        str(config),
        "--host",
        host,
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    env = {
        "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
    }
    return argv, env
