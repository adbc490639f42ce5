"""The paging system's end of the wire for the alert tests: an HTTP receiver that keeps
every body exactly as Alertmanager posted it (it receives; it stands in for nothing we ship)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Webhook:
    """Records each POSTed body; ``firing`` finds alerts by name and labels."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                outer.bodies.append(self.rfile.read(int(self.headers.get("content-length", "0"))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def firing_bodies(self, alertname: str, **labels: str) -> list[tuple[bytes, dict[str, Any]]]:
        """Each (posted body, alert) where ``alertname`` fires with these ``labels``."""
        found = []
        for body in list(self.bodies):
            for alert in json.loads(body).get("alerts", []):
                have = alert.get("labels", {})
                if (
                    alert.get("status") == "firing"
                    and have.get("alertname") == alertname
                    and all(have.get(k) == v for k, v in labels.items())
                ):
                    found.append((body, alert))
        return found

    def firing(self, alertname: str, **labels: str) -> list[dict[str, Any]]:
        """The firing alerts named ``alertname`` with these ``labels``, in order received."""
        return [alert for _body, alert in self.firing_bodies(alertname, **labels)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
