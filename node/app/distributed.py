"""``neuroread worker``: a Celery worker that runs the node's jobs on this machine.

The node (``neuroread serve`` with ``queue.backend: celery``) receives, assembles, routes,
publishes job ids and delivers; it runs no model. Each worker process of the pool claims the
job a message names in the shared job store and runs the same job function as the embedded
workers (:func:`~neuroread.node.app.job.run_job`) with its own context:

* **inputs** from the shared spool (``storage.spool``, a folder every machine mounts at the
  path its configuration names; the series' study comes from the job store's ``series`` table);
* **outputs** into the shared outbox (``storage.outbox``): the objects are written there and
  their rows added to the outbox tables in the job store; the node that reaches the PACS sends
  them (a worker delivers nothing);
* **models** loaded once per pool child, at its first job (never in the parent, which forks the
  children: no GPU context is made before the fork).

Dispatch, leases, retries and what happens when a child, a worker, Redis or PostgreSQL dies:
:mod:`neuroread.node.jobs.dispatch`.
"""
from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable

from neuroread.models import ModelRegistry
from neuroread.node.config import Config
from neuroread.node.deliver import Backoff, Outbox
from neuroread.node.encode import find_dciodvfy
from neuroread.node.jobs import JobStore, Worker, make_celery, register_task, time_limited, worker_id
from neuroread.node.redact import install as install_log_redaction
from neuroread.node.spool import Spool

from .build import build_destinations, build_routes, encode_info, make_catalog, make_runner
from .job import JobContext, run_job

logger = logging.getLogger(__name__)


def worker_factory(config: Config, registry: ModelRegistry) -> Callable[[], Worker]:
    """What a pool child calls at its first job: its :class:`Worker` over the shared job store,
    spool and outbox, with its own model runner."""
    def make() -> Worker:
        q = config.queue
        store = JobStore(q.database, max_attempts=q.max_attempts, backoff_s=q.retry_s)
        destinations = build_destinations(config)
        d = config.deliver
        outbox = Outbox(store.engine, config.storage.outbox, destinations,
                        backoff=Backoff(d.retry_base_s, d.retry_cap_s, d.retry_factor))
        catalog = make_catalog(config, registry)
        ctx = JobContext(registry, build_routes(config, registry), [x.name for x in destinations], store,
                         Spool(config.storage.spool), outbox, make_runner(config, registry, catalog),
                         encode_info(config), find_dciodvfy())
        me = worker_id()
        logger.info("worker %s ready: job store %s, spool %s, outbox %s", me, store.engine.url.render_as_string(),
                    config.storage.spool, config.storage.outbox)
        return Worker(store, time_limited(lambda job: run_job(job, ctx), q.time_limit_s), me, lease_s=q.lease_s)
    return make


def run_worker(config: Config, registry: ModelRegistry, *, concurrency: int | None = None,
               loglevel: str = "INFO", name: str | None = None) -> None:
    """Run a Celery worker (prefork pool of ``concurrency`` children, default ``queue.workers``)
    for ``config``'s broker until it is stopped (SIGTERM: warm shutdown, running jobs finish)."""
    if config.queue.backend != "celery":
        raise ValueError(f"queue.backend is {config.queue.backend!r}: `neuroread worker` needs "
                         "queue.backend: celery and queue.broker (the node runs its own workers otherwise)")
    config.check_models({n: registry.spec(n) for n in registry.names()})
    install_log_redaction()
    JobStore(config.queue.database).close()  # fail now, in the parent, if the job store is unreachable
    app = make_celery(config.queue)
    register_task(app, worker_factory(config, registry))
    app.worker_main(["worker", "--pool=prefork", f"--concurrency={concurrency or config.queue.workers}",
                     f"--loglevel={loglevel}", "-n", name or f"neuroread-{os.getpid()}@{socket.gethostname()}",
                     "--without-gossip", "--without-mingle", "--without-heartbeat"])
