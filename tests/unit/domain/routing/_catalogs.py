"""Catalog texts shared by the routing tests."""

from __future__ import annotations

from somaagent.domain.routing import Catalog, default_catalog_text, load_catalog, render_catalog

LOCAL_URLS = {
    "PRIMARY_MODEL_URL": "http://127.0.0.1:18081/v1",
    "ESCALATION_MODEL_URL": "http://127.0.0.1:18082/v1",
    "MODEL_PARALLEL": "4",
}


def local_catalog() -> Catalog:
    """The shipped catalog, rendered with LOCAL endpoints."""
    return load_catalog(render_catalog(default_catalog_text(), LOCAL_URLS))


def entry_yaml(
    model_id: str,
    tier: str,
    *,
    enabled: bool = True,
    url: str | None = "http://10.0.0.1:8000/v1",
    pricing: str = 'input_per_1k: "0.001"\n      output_per_1k: "0.001"\n'
    '      cached_input_per_1k: "0.0005"',
    developer_only: bool = False,
    personas: str = "[]",
    sla: str = "default: 2000",
) -> str:
    """One catalog entry as YAML (indented for a ``models:`` list)."""
    return (
        f"  - model_id: {model_id}\n"
        f"    display_name: {model_id}\n"
        f"    tier: {tier}\n"
        f"    enabled: {'true' if enabled else 'false'}\n"
        f"    base_url: {url if url is not None else 'null'}\n"
        f"    revision: org/{model_id}@0123456789abcdef\n"
        f"    context_window: 8192\n"
        f"    pricing:\n      {pricing}\n"
        f"    allowed_personas: {personas}\n"
        f"    developer_only: {'true' if developer_only else 'false'}\n"
        f"    latency_sla_ms:\n      {sla}\n"
    )


def gpu(hour: str = "0.10", gpus: int = 1) -> str:
    """A GPU pricing block for ``entry_yaml``."""
    return f'gpu_hour_usd: "{hour}"\n      gpus: {gpus}'


def tokens(price: str) -> str:
    """A per-1K token pricing block with the same input and output price."""
    return (
        f'input_per_1k: "{price}"\n      output_per_1k: "{price}"\n'
        f'      cached_input_per_1k: "{price}"'
    )


def catalog_of(*entries: str) -> Catalog:
    """A catalog from ``entry_yaml`` pieces."""
    return load_catalog("version: 1\nmodels:\n" + "".join(entries))
