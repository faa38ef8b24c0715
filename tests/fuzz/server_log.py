"""What the in-process services logged at ERROR during a fuzzed call, and why.

Every INTERNAL answer carries the same message ("internal error in <method>; ... lathe
trace <id>"), so the status alone cannot tell a NUL reaching Postgres from a timestamp
out of range. The services run in the test process, so the exception the interceptor
logs with that answer is at hand: its type and the innermost frame of Lathe's own code
name the cause, and findings are told apart by it.
"""

from __future__ import annotations

import logging
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class LoggedError:
    """One ERROR record: its message and, when it carried one, the exception."""

    logger: str
    message: str
    cause: str
    """``<ExceptionType> at <file>:<line> (<function>): <text>``, or "" without exc_info."""


def _cause(exc_info: tuple[type[BaseException], BaseException, object] | None) -> str:
    if not exc_info or exc_info[1] is None:
        return ""
    error = exc_info[1]
    frames = traceback.extract_tb(error.__traceback__)
    ours = [
        f
        for f in frames
        if f.filename.startswith(str(_REPO))
        and "/.venv/" not in f.filename
        and "/tests/" not in f.filename
    ]
    frame = (ours or frames or [None])[-1]
    where = ""
    if frame is not None:
        path = Path(frame.filename)
        shown = path.relative_to(_REPO) if path.is_relative_to(_REPO) else path.name
        where = f" at {shown}:{frame.lineno} ({frame.name})"
    text = str(error).splitlines()[0][:200] if str(error) else ""
    return f"{type(error).__name__}{where}: {text}"


class ErrorLog(logging.Handler):
    """Collects ERROR records from every logger; ``take`` empties it."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self._records: list[LoggedError] = []
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        logged = LoggedError(
            logger=record.name,
            message=record.getMessage()[:300],
            cause=_cause(record.exc_info),  # type: ignore[arg-type]
        )
        with self._guard:
            self._records.append(logged)

    def take(self) -> list[LoggedError]:
        with self._guard:
            records, self._records = self._records, []
        return records

    def install(self) -> None:
        logging.getLogger().addHandler(self)

    def remove(self) -> None:
        logging.getLogger().removeHandler(self)
