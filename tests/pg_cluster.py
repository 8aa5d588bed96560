"""A throwaway PostgreSQL cluster for tests: ``initdb`` in a temporary folder, a server on a free
loopback port, stopped and removed afterwards.

The binaries are found from ``OTCACHE_PG_BINDIR``, then ``pg_ctl`` on ``PATH``, then Debian's
``/usr/lib/postgresql/<version>/bin`` (newest first). PostgreSQL refuses to run as root, so under root
the cluster belongs to the unprivileged ``nobody`` account and every server command runs as that user
through ``setpriv`` (util-linux); the temporary folder lies directly under the system temp dir, which
``nobody`` can traverse. The server runs with ``fsync=off`` and trust authentication on 127.0.0.1
only: it holds nothing worth keeping.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Unavailable(Exception):
    """Why no cluster can be started here (one line, for a skip reason)."""


def find_bindir() -> Path:
    explicit = os.environ.get("OTCACHE_PG_BINDIR")
    candidates = [Path(explicit)] if explicit else []
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).parent)
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True)]
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    raise Unavailable("PostgreSQL server binaries (initdb, pg_ctl) not found; install postgresql-15 "
                      "or set OTCACHE_PG_BINDIR")


def _version(path: str) -> int:
    try:
        return int(Path(path).parent.name)
    except ValueError:
        return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_owner() -> tuple[list[str], tuple[int, int] | None]:
    """The command prefix that runs PostgreSQL as a non-root user, and that user's (uid, gid)."""
    if os.geteuid() != 0:
        return [], None
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise Unavailable("running as root and setpriv (util-linux) is missing: cannot drop to 'nobody' for initdb")
    user = pwd.getpwnam("nobody")
    return [setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"], (user.pw_uid, user.pw_gid)


@contextmanager
def postgres_cluster() -> Iterator[str]:
    """Yield a SQLAlchemy URL of a fresh, empty PostgreSQL server; raise :class:`Unavailable` if none."""
    bindir = find_bindir()
    prefix, owner = _as_owner()
    root = Path(tempfile.mkdtemp(prefix="otcache-pg-"))
    data, log = root / "data", root / "server.log"
    port = _free_port()
    started = False
    try:
        if owner is not None:
            os.chown(root, *owner)

        def run(*args: str) -> None:
            result = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120)
            if result.returncode != 0:
                raise RuntimeError(f"{Path(args[0]).name} failed: {(result.stderr or result.stdout).strip()[-2000:]}")

        run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8",
            "--locale=C")
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
        run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "-t", "60", "start")
        started = True
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        if started:
            subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
