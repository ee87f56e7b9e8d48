"""Real Redis and PostgreSQL servers for tests, on loopback ports in temporary folders.

Both come from Debian's packages (``redis-server``, ``postgresql``; ``.ci/setup`` installs them);
the launchers are the queue benchmark's (:mod:`neuroread.bench_queue`): Redis with an append-only
file, PostgreSQL as its own cluster (run as ``postgres`` under root). Each can be stopped and
started again on the same port and data (the restart fault tests).
"""
from __future__ import annotations

from neuroread.bench_queue import LocalPostgres as PostgresServer
from neuroread.bench_queue import LocalRedis as RedisServer

__all__ = ["PostgresServer", "RedisServer"]
