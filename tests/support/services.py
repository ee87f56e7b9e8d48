"""Real Redis and PostgreSQL servers for tests, on loopback ports in temporary folders.

Both come from Debian's packages (``redis-server``, ``postgresql``; ``.ci/setup`` installs them).
PostgreSQL refuses to run as root, so under root its cluster is made and run as Debian's
``postgres`` user (``runuser``); otherwise as the current user. Each server can be stopped and
started again on the same port and data (the restart fault tests).
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from support.peers import free_port


def _need(path: str | None, package: str) -> str:
    if not path:
        pytest.fail(f"{package} is not installed (apt-get install {package}; .ci/setup does)")
    return path


class RedisServer:
    """``redis-server`` on 127.0.0.1 with an append-only file (``appendonly yes``, fsync every
    second), so queued messages survive a restart as a production broker's should."""

    def __init__(self, folder: Path) -> None:
        self.binary = _need(shutil.which("redis-server"), "redis-server")
        self.folder, self.port = folder, free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no",
             "--logfile", str(self.folder / "redis.log")], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 20.0) -> None:
        import redis

        deadline = time.monotonic() + timeout
        while True:
            try:
                if redis.Redis(port=self.port, socket_connect_timeout=1).ping():
                    return
            except redis.exceptions.RedisError:
                pass
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(f"redis-server exited with {self.proc.returncode}: "
                            f"{(self.folder / 'redis.log').read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"redis-server not answering on port {self.port} after {timeout:.0f} s")
            time.sleep(0.1)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # SIGTERM: redis writes its append-only file and exits
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server (immediately) if it runs, and remove its folder."""
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


class PostgresServer:
    """A PostgreSQL cluster of its own (``initdb``) on 127.0.0.1, trust authentication, with a
    database ``neuroread``; :attr:`url` is its SQLAlchemy URL (psycopg 3). Its folder is a new
    one under the system's temporary folder (pytest's are private to root, and under root the
    server runs as ``postgres``), removed by :meth:`close`."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[4]))
        self.bin = Path(_need(found[-1] if found else None, "postgresql")).parent
        self.folder, self.port = Path(tempfile.mkdtemp(prefix="neuroread-postgres-")), free_port()
        self.data = self.folder / "data"
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/neuroread"

    def _run(self, tool: str, *args: str, timeout: float = 120) -> None:
        command = [str(self.bin / tool), *args]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.folder)
        if done.returncode != 0:
            pytest.fail(f"{tool} failed ({done.returncode}): {(done.stdout + done.stderr)[-2000:]}")

    def start(self) -> "PostgresServer":
        options = f"-h 127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "postgres.log"), "-o", options,
                  "-w", "-t", "60", "start")
        self._create_database()
        return self

    def _create_database(self) -> None:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'neuroread'").fetchone() is None:
                conn.execute("CREATE DATABASE neuroread")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server (immediately) if it runs, and remove its folder."""
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)
