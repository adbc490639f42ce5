"""Run the gateway under cProfile and write the profile when it is stopped (SIGTERM).

Usage (by ``gateway_profile.py --cprofile OUT``): python _cprofile_gateway.py OUT
"""

from __future__ import annotations

import cProfile
import runpy
import signal
import sys
from typing import Any


def _stop(*_: Any) -> None:
    raise SystemExit(0)


def main() -> None:
    out = sys.argv[1]
    sys.argv = ["somaagent.entrypoints.gateway"]
    # uvicorn restores this handler after its graceful shutdown and re-raises SIGTERM:
    # exiting through SystemExit lets the profile be written.
    signal.signal(signal.SIGTERM, _stop)
    profile = cProfile.Profile()
    profile.enable()
    try:
        runpy.run_module("somaagent.entrypoints.gateway", run_name="__main__")
    finally:
        profile.disable()
        profile.dump_stats(out)


if __name__ == "__main__":
    main()
