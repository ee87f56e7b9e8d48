"""The node's status page and Prometheus ``/metrics`` endpoint (``config.status``).

:class:`StatusServer` serves, over HTTP (login by HTTP basic when configured):

* ``/``: an HTML page that reloads itself: jobs by state and model, queue depth, running jobs
  and their workers, throughput, each destination's backlog, the latest done jobs with
  thumbnails of their Secondary Capture results (``/thumbnail/<job id>/<SOP UID>.png``), the
  latest failures with their reasons. No patient data.
* ``/metrics``: the node's :class:`NodeMetrics` in Prometheus text format.

The node makes one :class:`NodeMetrics` on its database, counts each stored instance with
:meth:`NodeMetrics.instance_received`, and, with ``config.status`` set, a :class:`StatusServer`
that starts and stops with it::

    metrics = NodeMetrics(store.engine)
    server = StatusServer(config.status, store.engine, outbox_folder=config.storage.outbox,
                          metrics=metrics, node_name=config.node.ae_title)
    server.start()          # the metrics poller too; server.port, server.url
    metrics.instance_received(record.outcome)
    server.stop()

Everything is read from the database (:mod:`.queries`), so jobs run by workers on other
machines (the Celery backend) are counted as the node's own.
"""
from .metrics import NodeMetrics
from .page import Snapshot
from .server import StatusServer
from .thumbnails import ThumbnailError, Thumbnails, is_secondary_capture, render_png

__all__ = ["NodeMetrics", "Snapshot", "StatusServer", "ThumbnailError", "Thumbnails", "is_secondary_capture",
           "render_png"]
