"""The status page: one HTML document rendered on the server from a :class:`Snapshot`.

No script: the page reloads itself (``<meta http-equiv=refresh>``), and its only other requests
are the thumbnails (``/thumbnail/<job id>/<SOP Instance UID>.png``). Every value is escaped.
It names no patient: jobs by id, model, state, series and study UIDs, and failure reasons,
which the node has redacted already.

Sections: a summary (queue depth, running jobs, throughput), jobs by state and model, running
jobs with their worker (the lease owner), each destination's backlog, the latest done jobs with
thumbnails of their Secondary Capture results and their deliveries, the latest failures.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from html import escape

import sqlalchemy as sa

from neuroread.node.deliver import Outbox, OutboxItem
from neuroread.node.jobs import STATES

from .queries import Backlog, JobLine, Throughput, backlog, job_counts, jobs_in, queue_depth, throughput
from .thumbnails import is_secondary_capture

FAILURES = 20
RECENT = 10
THUMBNAILS_PER_JOB = 8


@dataclass(frozen=True)
class Snapshot:
    """What the page shows, read at ``at``; ``recent``: done jobs with their outbox items."""

    node_name: str
    at: datetime
    counts: dict[tuple[str, str], int]
    queue_depth: int
    running: list[JobLine]
    failed: list[JobLine]
    recent: list[tuple[JobLine, list[OutboxItem]]]
    throughput: Throughput
    backlog: list[Backlog]


def take_snapshot(engine: sa.Engine, outbox: Outbox, now: datetime, node_name: str) -> Snapshot:
    """Read everything the page shows (a few queries, plus one per recent job for its results)."""
    with engine.connect() as conn:
        counts, depth = job_counts(conn), queue_depth(conn, now)
        running, failed = jobs_in(conn, "running"), jobs_in(conn, "failed", FAILURES)
        done, rate, lines = jobs_in(conn, "done", RECENT), throughput(conn, now), backlog(conn, now.timestamp())
    recent = [(job, outbox.status(str(job.id))) for job in done]
    return Snapshot(node_name, now, counts, depth, running, failed, recent, rate, lines)


# -- rendering ---------------------------------------------------------------------------------------
_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.6em 0 .4em}
table{border-collapse:collapse;background:#fff}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;
vertical-align:top}td.n,th.n{text-align:right}.uid{font-family:monospace;font-size:.85em}.muted{color:#777}
.tiles{display:flex;gap:1em;flex-wrap:wrap}.tile{background:#fff;border:1px solid #ccc;padding:.5em 1em}
.tile b{display:block;font-size:1.6em}.bad{color:#b00020}img.thumb{max-height:120px;margin:2px;
border:1px solid #ccc;background:#000}
"""


def _text(value: object) -> str:
    return escape(str(value), quote=True)


def _when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _uids(values: tuple[str, ...] | list[str]) -> str:
    return "<br>".join(f'<span class="uid">{_text(v)}</span>' for v in values)


def _table(headers: list[str], rows: list[str], empty: str, table_id: str) -> str:
    if not rows:
        return f'<p class="muted" id="{table_id}">{_text(empty)}</p>'
    head = "".join(f"<th>{_text(h)}</th>" for h in headers)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _summary(s: Snapshot) -> str:
    t = s.throughput
    tiles = [("queue-depth", "queue depth", s.queue_depth), ("running", "running", len(s.running)),
             ("done-5min", "done, last 5 min", t.done_5min), ("done-hour", "done, last hour", t.done_hour),
             ("failed-hour", "failed, last hour", t.failed_hour),
             ("series-received", "series received / min", f"{t.series_received_per_min:.2f}"),
             ("series-processed", "series processed / min", f"{t.series_processed_per_min:.2f}")]
    return '<div class="tiles">' + "".join(f'<div class="tile" id="{key}"><b>{_text(value)}</b>{_text(label)}</div>'
                                           for key, label, value in tiles) + "</div>"


def _jobs_by_state(s: Snapshot) -> str:
    models = sorted({model for model, _ in s.counts})
    rows = []
    for model in models:
        cells = "".join(f'<td class="n" data-model="{_text(model)}" data-state="{state}">'
                        f'{s.counts.get((model, state), 0)}</td>' for state in STATES)
        total = sum(s.counts.get((model, state), 0) for state in STATES)
        rows.append(f"<tr><th>{_text(model)}</th>{cells}<td class='n'>{total}</td></tr>")
    return _table(["model", *STATES, "total"], rows, "No jobs yet.", "jobs")


def _running(s: Snapshot) -> str:
    rows = [f"<tr><td>{j.id}</td><td>{_text(j.model)}</td><td>{_text(j.worker or '')}</td><td class='n'>{j.attempts}"
            f"</td><td>{_text(_when(j.lease_expires))}</td><td>{_uids(j.series_uids)}</td></tr>" for j in s.running]
    return _table(["job", "model", "worker (lease owner)", "attempt", "lease expires", "series"], rows,
                  "No job running.", "running-jobs")


def _destinations(s: Snapshot) -> str:
    rows = [f'<tr data-destination="{_text(b.destination)}"><th>{_text(b.destination)}</th>'
            f"<td class='n'>{b.pending}</td><td class='n'>{b.retrying}</td><td>{_text(_age(b.oldest_waiting_s))}</td>"
            f"<td class='n{' bad' if b.rejected else ''}'>{b.rejected}</td><td class='n'>{b.sent}</td>"
            f"<td class='n'>{b.failed_attempts}</td></tr>" for b in s.backlog]
    return _table(["destination", "pending", "retrying", "oldest waiting", "rejected", "sent", "failed attempts"],
                  rows, "Nothing was queued for delivery yet.", "destinations")


def _deliveries(items: list[OutboxItem]) -> str:
    by = Counter((i.destination, i.state) for i in items)
    return "<br>".join(f"{_text(dest)}: {n} {_text(state)}" for (dest, state), n in sorted(by.items())) or \
        '<span class="muted">no destination</span>'


def _recent(s: Snapshot) -> str:
    rows = []
    for job, items in s.recent:
        pictures, seen = [], set()
        for item in items:
            if is_secondary_capture(item.sop_class_uid) and item.sop_instance_uid not in seen:
                seen.add(item.sop_instance_uid)
                pictures.append(item.sop_instance_uid)
        thumbs = "".join(f'<img class="thumb" src="/thumbnail/{job.id}/{_text(uid)}.png" alt="SC {_text(uid)}" '
                         f'title="{_text(uid)}">' for uid in pictures[:THUMBNAILS_PER_JOB])
        studies = sorted({i.study_uid for i in items})
        rows.append(f'<tr data-job="{job.id}"><td>{job.id}</td><td>{_text(job.model)}</td><td>{_uids(studies)}</td>'
                    f"<td>{_uids(job.series_uids)}</td><td>{_text(_when(job.at))}</td><td>{_deliveries(items)}</td>"
                    f"<td>{thumbs}</td></tr>")
    return _table(["job", "model", "study", "series", "done", "deliveries", "pictures"], rows,
                  "No job done yet.", "recent")


def _failures(s: Snapshot) -> str:
    rows = [f'<tr data-job="{j.id}"><td>{j.id}</td><td>{_text(j.model)}</td><td>{_uids(j.series_uids)}</td>'
            f"<td class='bad'>{_text(j.reason)}</td><td>{_text(_when(j.at))}</td></tr>" for j in s.failed]
    return _table(["job", "model", "series", "reason", "failed"], rows, "No failed job.", "failures")


def render(s: Snapshot, refresh_s: int = 10) -> str:
    """The page (UTF-8 HTML); it reloads itself every ``refresh_s`` seconds."""
    name = _text(s.node_name)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" '
            f'content="{int(refresh_s)}"><title>neuroread {name}: status</title><style>{_STYLE}</style></head><body>'
            f'<h1>neuroread {name}</h1><p class="muted">As of {_text(_when(s.at))}; this page reloads every '
            f'{int(refresh_s)} s. Prometheus metrics: <a href="/metrics">/metrics</a>.</p>'
            f"{_summary(s)}<h2>Jobs by state</h2>{_jobs_by_state(s)}<h2>Running</h2>{_running(s)}"
            f"<h2>Destinations</h2>{_destinations(s)}<h2>Recent results (latest {RECENT} done jobs)</h2>"
            f"{_recent(s)}<h2>Failures (latest {FAILURES})</h2>{_failures(s)}</body></html>")
