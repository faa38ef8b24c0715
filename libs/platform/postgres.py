"""An embedded PostgreSQL server from the ``pgserver`` wheel, for development.

It listens on 127.0.0.1 at its own port with no Unix socket, so it never
collides with a system Postgres. Postgres refuses to run as root; as root the
server runs as the unprivileged ``pgserver`` user, as the wheel itself does.
"""

from __future__ import annotations

import os
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

with warnings.catch_warnings():
    # pgserver asks platformdirs for a runtime dir at import and warns when
    # XDG_RUNTIME_DIR is unset (always, in containers); Lathe never uses that dir.
    warnings.simplefilter("ignore")
    import pgserver
    from pgserver._commands import POSTGRES_BIN_PATH
    from pgserver.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

_SYSTEM_USER_WHEN_ROOT = "pgserver"
DATABASE = "lathe"
_AUTOVACUUM_NAPTIME_S = 5


@dataclass(frozen=True)
class EmbeddedPostgres:
    """A Postgres data directory and the port its server listens on."""

    data_dir: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / "postgres.log"

    def _run_as(self) -> str | None:
        return _SYSTEM_USER_WHEN_ROOT if os.geteuid() == 0 else None

    def _prepare_permissions(self) -> None:
        user = self._run_as()
        if user is None:
            return
        import pwd
        import stat

        entry = ensure_user_exists(user)
        assert entry is not None
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)  # e.g. a virtualenv inside a 0700 dir
        readable = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
        ensure_folder_permissions(POSTGRES_BIN_PATH, readable)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", readable)
        os.chown(self.data_dir, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
        self.log_path.touch()
        os.chown(self.log_path, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)

    def start(self) -> None:
        """Initialise the data directory if new and start the server (waits until ready)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_permissions()
        if not (self.data_dir / "PG_VERSION").exists():
            pgserver.initdb(
                ["--auth=trust", "--encoding=utf8", "-U", "postgres"],
                pgdata=self.data_dir,
                user=self._run_as(),
            )
        # Autovacuum looks every 5 s instead of every minute: a development database is
        # filled in bursts (the demo writes 30,000 stream tiles in seconds), and until a
        # fresh table is analyzed its reads run on plans made for an empty one.
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
            f"-c autovacuum_naptime={_AUTOVACUUM_NAPTIME_S}"
        )
        try:
            pgserver.pg_ctl(
                ["-w", "-t", "60", "-o", options, "-l", str(self.log_path), "start"],
                pgdata=self.data_dir,
                user=self._run_as(),
                timeout=90,
            )
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(
                f"embedded Postgres failed to start; see {self.log_path}:\n{self._log_tail()}"
            ) from exc

    def stop(self) -> None:
        if not (self.data_dir / "postmaster.pid").exists():
            return
        if self._run_as() is not None:
            # A parent may have been made private again since start (pytest resets its
            # /tmp/pytest-of-<user> to 0700 whenever another session starts), and pg_ctl
            # runs as the server's user, who must reach the data directory.
            ensure_prefix_permissions(self.data_dir)
        pgserver.pg_ctl(
            ["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=self._run_as(), timeout=60
        )

    def postmaster_pid(self) -> int | None:
        pid_file = self.data_dir / "postmaster.pid"
        try:
            return int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"
