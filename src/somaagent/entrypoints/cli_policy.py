"""``soma policy``: check the Rego policies, or serve them over OPA's REST API.

``soma policy check [--dir DIR]`` compiles every ``.rego`` under ``DIR`` (default: the
``policy_dir`` setting, ``SOMA_POLICY_DIR``) with the real OPA
engine, evaluates the gateway decision on a built-in example input, and prints the policy
version and constitution hash; it exits 1 with the compiler's ``file:line`` messages when a
policy does not compile. ``soma policy serve --dir DIR --host H --port N`` serves the same
policies on ``POST /v1/data/<path>`` (see :mod:`somaagent.entrypoints.opa_server`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from somaagent.adapters.opa import (
    InProcessPolicyEngine,
    PolicyBundle,
    PolicyUnavailable,
    constitution_hash,
    load_policy_bundle,
)
from somaagent.domain.policy import PolicyError, example_input
from somaagent.settings import Settings

__all__ = ["add_policy"]

DEFAULT_PORT = 8181  # OPA's own default


def _load(policy_dir: Path) -> tuple[PolicyBundle, str]:
    """The bundle (compiled once to prove it compiles) and the constitution hash."""
    bundle = load_policy_bundle(policy_dir)
    constitution = constitution_hash(policy_dir)
    InProcessPolicyEngine(bundle).close()
    return bundle, constitution


def _fail(exc: Exception) -> int:
    print(f"soma policy: error: {exc}", file=sys.stderr)
    return 1


def _policy_dir(settings: Settings, args: argparse.Namespace) -> Path:
    return Path(args.dir) if args.dir is not None else settings.policy_dir


def _cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    policy_dir = _policy_dir(settings, args)
    try:
        bundle = load_policy_bundle(policy_dir)
        constitution = constitution_hash(policy_dir)
        with InProcessPolicyEngine(bundle) as engine:
            verdict = engine.evaluate(example_input())
    except (PolicyError, PolicyUnavailable) as exc:
        return _fail(exc)
    print(f"policy dir         {policy_dir}")
    print(f"files              {', '.join(sorted(bundle.files))}")
    print(f"policy version     {bundle.version}")
    print(f"constitution hash  {constitution}")
    print(f"example verdict    {verdict.action} ({'; '.join(verdict.reasons)})")
    return 0


def _cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from somaagent.entrypoints.opa_server import create_app

    policy_dir = _policy_dir(settings, args)
    try:
        bundle, constitution = _load(policy_dir)
    except (PolicyError, PolicyUnavailable) as exc:
        return _fail(exc)
    print(
        f"serving policy {bundle.version[:12]} (constitution {constitution[:12]}) from "
        f"{policy_dir} on http://{args.host}:{args.port}/v1/data/",
        flush=True,
    )
    uvicorn.run(
        create_app(bundle), host=args.host, port=args.port, log_level="warning", access_log=False
    )
    return 0


def _port(value: str) -> int:
    number = int(value)
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError("must be a TCP port, 1-65535")
    return number


def add_policy(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``soma policy check`` and ``soma policy serve`` to the ``soma`` sub-commands."""
    policy = sub.add_parser("policy", help="Rego policies: check, serve over OPA's REST API")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    check = policy_sub.add_parser("check", help="compile every .rego and print the version")
    check.add_argument("--dir", type=Path, help="policy directory (default: SOMA_POLICY_DIR)")
    check.set_defaults(func=_cmd_check)
    serve = policy_sub.add_parser("serve", help="serve the policies (POST /v1/data/<path>)")
    serve.add_argument("--dir", type=Path, help="policy directory (default: SOMA_POLICY_DIR)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_port, default=DEFAULT_PORT)
    serve.set_defaults(func=_cmd_serve)
