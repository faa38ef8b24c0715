"""Rank 0's reports to the service: one JSON object per line, appended and flushed.

The service follows the file of the attempt it started and of no other, so a stray
process of an older attempt writes where nobody reads (and its events would be refused
anyway: see domain/job.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class Progress:
    def __init__(self, path: Path | None) -> None:
        self._path = path

    def report(self, event: str, **fields: Any) -> None:
        if self._path is None:
            return
        line = json.dumps({"event": event, **fields}, sort_keys=True) + "\n"
        with self._path.open("a") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
