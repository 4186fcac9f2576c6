"""A throwaway PostgreSQL cluster for the tests and benchmarks, from the system's server binaries.

``PgCluster.start()`` runs Debian's ``initdb`` and ``pg_ctl`` (package ``postgresql``: binaries under
``/usr/lib/postgresql/<version>/bin``, or ``PG_BINDIR``) in a temporary folder, on a free port of 127.0.0.1,
with a password (so the bot connects exactly as it would to a real server: TCP, scram-sha-256). PostgreSQL
refuses to run as root: as root the cluster runs as the ``postgres`` user (the Debian package makes it),
through ``runuser``. One cluster serves a whole test session; ``create_database`` makes a fresh database per
test (``CREATE DATABASE ... TEMPLATE template0``: a few milliseconds). ``stop()`` removes everything.

Durability is off (``fsync``, ``synchronous_commit``, ``full_page_writes``) for the tests' speed; the
benchmarks start theirs with ``durable=True``, the server's defaults.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SUPERUSER = "imagine"


def find_bindir() -> Path | None:
    """The newest PostgreSQL server binaries installed here (``PG_BINDIR`` wins), or None."""
    if os.environ.get("PG_BINDIR"):
        bindir = Path(os.environ["PG_BINDIR"])
        return bindir if (bindir / "initdb").exists() else None
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def missing_reason() -> str | None:
    """Why no cluster can be started here (None: it can)."""
    if find_bindir() is None:
        return ("PostgreSQL's server binaries are not installed (apt-get install postgresql; or PG_BINDIR): "
                "the PostgreSQL tests are skipped")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root with no 'postgres' user to run the server as: the PostgreSQL tests are skipped"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgCluster:
    def __init__(self, *, durable: bool = False) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError(missing_reason() or "no PostgreSQL binaries")
        self.bindir = bindir
        self.durable = durable
        self.password = secrets.token_urlsafe(12)
        self.port = 0
        self.root = Path(tempfile.mkdtemp(prefix="imagine-pg-"))
        self.data = self.root / "data"
        self._user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        self._dbs = 0

    # ------------------------------------------------------------------ running the server
    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._user is not None:
            cmd = ["runuser", "-u", self._user.pw_name, "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root,
                                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"})
        if result.returncode != 0:
            log = (self.root / "server.log").read_text() if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}\n{log[-2000:]}")
        return result

    def start(self) -> PgCluster:
        if self._user is not None:
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self._user is not None:
            os.chown(pwfile, self._user.pw_uid, self._user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, f"--pwfile={pwfile}", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")
        pwfile.unlink()
        options = ["-c listen_addresses=127.0.0.1", f"-k {self.root}", "-c max_connections=300"]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        for attempt in range(3):  # a free port may be taken between finding it and binding it
            self.port = _free_port()
            try:
                self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60",
                          "-o", " ".join([f"-p {self.port}", *options]), "start", timeout=90)
                return self
            except RuntimeError:
                if attempt == 2:
                    raise
                time.sleep(0.2)
        return self

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ databases
    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def admin(self, sql: str) -> None:
        """Run one statement on the ``postgres`` database (outside any transaction)."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql)

    def create_database(self, prefix: str = "t") -> str:
        """A new, empty database: its URL."""
        self._dbs += 1
        name = f"{prefix}{os.getpid()}_{self._dbs}_{secrets.token_hex(3)}"
        self.admin(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def __enter__(self) -> PgCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
