"""A client of Feast's HTTP feature server (standard library only).

Used by ``run_feast`` inside Feast's environment and by ``bench.features_serving``,
which calls a running ``feast serve`` side by side with Lathe in one measurement.
"""

from __future__ import annotations

import http.client
import json
from typing import Any

from bench.feast_baseline import data


class HttpClient:
    """POST /get-online-features over one keep-alive connection; the reply parsed."""

    def __init__(self, port: int, features: list[str]) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.features = features
        self.headers = {"Content-Type": "application/json"}

    def get(self, loan_ids: list[str]) -> dict[str, Any]:
        body = json.dumps({"features": self.features, "entities": {data.ENTITY_KEY: loan_ids}})
        self.conn.request("POST", "/get-online-features", body, self.headers)
        response = self.conn.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {payload[:500]!r}")
        return dict(json.loads(payload))

    def close(self) -> None:
        self.conn.close()
