"""A node on the distributed queue, for tests: Redis, PostgreSQL, one ``neuroread serve`` with
``queue.backend: celery`` (it receives, routes and delivers) and ``neuroread worker`` processes,
all real processes on loopback, the tiny test model in the workers.

:class:`WorkerProcess` runs ``python -m neuroread.cli worker`` in its own session (process
group), so a test can kill one pool child (:meth:`WorkerProcess.children`, or the lease owner
of a running job) or the whole worker (:meth:`WorkerProcess.kill_all`).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from support.node_process import REPO, ServeNode, wait_for
from support.peers import free_port
from support.services import PostgresServer, RedisServer


class WorkerProcess:
    """``neuroread worker -c <the node's configuration> --concurrency N`` in a subprocess."""

    def __init__(self, node: ServeNode, name: str, *, concurrency: int = 1, env: dict[str, str] | None = None) -> None:
        self.node, self.name, self.concurrency, self.env = node, name, concurrency, env or {}
        self.proc: subprocess.Popen | None = None
        self.logs: list[Path] = []

    def start(self, timeout: float = 90.0) -> "WorkerProcess":
        self.logs.append(self.node.root / f"worker-{self.name}-{len(self.logs) + 1}.log")
        with open(self.logs[-1], "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "neuroread.cli", "worker", "-c", str(self.node.config_path),
                 "--concurrency", str(self.concurrency), "--name", f"{self.name}@%h"], cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO / "tests"), **self.node.env, **self.env},
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self.ready, timeout, f"worker {self.name} ready")
        return self

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"worker {self.name} exited with {self.proc.returncode}\n{self.log_tail()}")
        return " ready." in self.log_text() and len(self.children()) == self.concurrency

    def children(self) -> list[int]:
        """The pids of the pool's child processes."""
        if self.proc is None:
            return []
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except OSError:
            return []

    def kill_all(self) -> None:
        """SIGKILL the worker and its children at once (a machine or container lost)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def log_tail(self, lines: int = 60) -> str:
        return f"--- worker {self.name} ---\n" + "\n".join(self.log_text().splitlines()[-lines:])


def pid_of(owner: str | None) -> int:
    """The pid in a lease owner ``host:pid``."""
    assert owner, "the job has no lease owner"
    return int(owner.rpartition(":")[2])


class Cluster:
    """Redis, PostgreSQL, a receiving node (celery backend) and ``workers`` worker processes."""

    def __init__(self, root: Path, destination_port: int, *, workers: int = 2, lease_s: float = 6.0,
                 sweep_s: float = 1.0, max_attempts: int = 3, env: dict[str, str] | None = None,
                 stable_age_s: float = 0.5, status: bool = False, time_limit_s: float = 3600.0) -> None:
        self.redis = RedisServer(root / "redis").start()
        self.postgres = PostgresServer().start()
        queue = {"backend": "celery", "broker": self.redis.url, "database": self.postgres.url,
                 "lease_s": lease_s, "sweep_s": sweep_s, "republish_s": 30, "max_attempts": max_attempts,
                 "time_limit_s": time_limit_s, "retry_s": 2}
        status_port = free_port()
        self.status_url = f"http://127.0.0.1:{status_port}" if status else None
        self.node = ServeNode(root / "node", destination_port=destination_port, queue=queue, env=env,
                              status={"port": status_port} if status else None)
        self.node.config["assemble"]["stable_age_s"] = stable_age_s
        self.node.config_path.write_text(__import__("yaml").safe_dump(self.node.config), encoding="utf-8")
        self.workers = [WorkerProcess(self.node, f"w{i}") for i in range(workers)]

    def start(self) -> "Cluster":
        self.node.start()
        for w in self.workers:
            w.start()
        return self

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        self.node.stop()
        self.postgres.close()
        self.redis.stop()

    def log_tail(self) -> str:
        return "\n".join([self.node.log_tail(), *(w.log_tail() for w in self.workers)])
