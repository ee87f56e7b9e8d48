"""``neuroread jobs`` (the job database: list, show with deliveries per destination, retry,
unrouted) and ``neuroread quarantine``."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from neuroread.node.deliver import OutboxItem

from .options import QUIET, config_of, with_config


def _cmd_jobs(args: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url

    from neuroread.node.jobs import JobStore

    config = config_of(args)
    url = config.queue.database
    db = make_url(url)
    if db.get_backend_name() == "sqlite" and db.database and not Path(db.database).exists():
        print(f"no job database yet at {db.database} (the node has not run with this configuration)")
        return 0
    store = JobStore(url)
    try:
        if args.action == "list":
            jobs = store.list(state=args.state)
            if not jobs:
                print("no jobs")
            for job in jobs:
                reason = f"  ({job.reason})" if job.reason else ""
                print(f"{job.id:6d}  {job.state:9s}  {job.model} {job.model_version}  "
                      f"attempts={job.attempts}  {job.updated:%Y-%m-%d %H:%M:%S}{reason}")
            return 0
        if args.action == "unrouted":
            from neuroread.node.app import routing_records

            series, studies = routing_records(store.engine)
            if not series and not studies:
                print("every series the node completed was routed (nothing unrouted, skipped or incomplete)")
            for row in series:
                print(f"{row['at']:%Y-%m-%d %H:%M:%S}  series {row['series_uid']}  {row['state']}: {row['reason']}")
            for row in studies:
                print(f"{row['at']:%Y-%m-%d %H:%M:%S}  study {row['study_uid']}  {row['model']} {row['state']}: "
                      f"{row['reason']}")
            return 0
        if args.id is None:
            raise ValueError(f"jobs {args.action} needs a job id")
        if args.action == "retry":
            job = store.retry(args.id)
            print(f"job {job.id} queued again")
            return 0
        from neuroread.node.deliver import Outbox

        try:
            job = store.get(args.id)
        except KeyError:
            raise ValueError(f"no job {args.id}") from None
        print(f"job {job.id}: {job.model} {job.model_version}, {job.state}{' - ' + job.reason if job.reason else ''}")
        for slot, series in job.inputs.items():
            print(f"  input {slot}: series {series} ({len(job.instances.get(slot, []))} instances)")
        for entry in store.audit_trail(job.id):
            print(f"  {entry.at:%Y-%m-%d %H:%M:%S}  {entry.event:10s} {entry.detail}")
        # The node's own outbox, on the job database (as Node builds it); read only: no destination is used.
        items = Outbox(store.engine, config.storage.outbox, []).status(str(job.id))
        kinds = {name: str(dest.get("type", "")) for name, dest in config.destinations.items()}
        for line in _delivery_lines(items, kinds):
            print(line)
        return 0
    finally:
        store.close()


_STATE_ORDER = ("sent", "pending", "retrying", "rejected")
_DELIVERY_COLUMNS = ("SOP Instance UID", "object", "state", "attempts", "status", "sent / next try", "last error")


def _utc(seconds: float | None) -> str:
    from datetime import datetime, timezone

    return "-" if seconds is None else f"{datetime.fromtimestamp(seconds, timezone.utc):%Y-%m-%d %H:%M:%S}"


def _one_line(text: str | None, limit: int | None = None) -> str:
    text = " ".join((text or "").split())
    return text if limit is None or len(text) <= limit else text[:limit - 1] + "…"


def _status_code(code: int | None, kind: str) -> str:
    """A DIMSE status in hex (dicom destinations), an HTTP status in decimal (the others)."""
    if code is None:
        return "-"
    return f"0x{code:04X}" if kind == "dicom" else f"HTTP {code}"


def _state_detail(state: str, items: list[OutboxItem]) -> str:
    """The summary's parenthesis for the objects of one destination in one state."""
    from collections import Counter

    if state not in ("retrying", "rejected"):
        return ""
    attempts = sorted({i.attempts for i in items})
    parts = [f"attempt {attempts[0]}" if len(attempts) == 1 else f"attempts {attempts[0]}-{attempts[-1]}"]
    if state == "retrying":
        parts.append(f"next {_utc(min(i.next_attempt_at for i in items))}")
    errors = Counter(_one_line(i.last_error, 120) for i in items if i.last_error)
    if errors:
        error = errors.most_common(1)[0][0]
        parts.append(f"last error: {error}" + (f" (and {len(errors) - 1} other errors)" if len(errors) > 1 else ""))
    return f" ({', '.join(parts)})"


def _delivery_lines(items: list[OutboxItem], kinds: dict[str, str]) -> list[str]:
    """A job's outbox rows for people: per destination a summary line, then one line per object.

    Only UIDs, SOP classes, states, counts, statuses and the destinations' own error texts:
    nothing that names a patient. Times are UTC, as in the audit trail.
    """
    from pydicom.uid import UID

    if not items:
        return ["  deliveries: none in the outbox (no output yet, or no destination)"]
    lines = ["  deliveries (times UTC):"]
    by_dest: dict[str, list[OutboxItem]] = {}
    for item in items:
        by_dest.setdefault(item.destination, []).append(item)
    for dest, rows in by_dest.items():
        by_state: dict[str, list[OutboxItem]] = {}
        for item in rows:
            by_state.setdefault(item.state, []).append(item)
        states = [s for s in _STATE_ORDER if s in by_state] + sorted(set(by_state) - set(_STATE_ORDER))
        counts = ", ".join(f"{len(by_state[s])} {s}{_state_detail(s, by_state[s])}" for s in states)
        unknown = "" if dest in kinds else " (not in this configuration)"
        lines.append(f"    {dest}{unknown}: {counts}")
        kind = kinds.get(dest, "")
        table = [_DELIVERY_COLUMNS]
        for item in rows:
            when = (f"sent {_utc(item.sent_at)}" if item.state == "sent" and item.sent_at is not None
                    else f"next {_utc(item.next_attempt_at)}" if item.state in ("pending", "retrying") else "-")
            table.append((item.sop_instance_uid, UID(item.sop_class_uid).name.removesuffix(" Storage"), item.state,
                          str(item.attempts), _status_code(item.status_code, kind), when,
                          _one_line(item.last_error) or "-"))
        widths = [max(len(row[c]) for row in table) for c in range(len(_DELIVERY_COLUMNS) - 1)]
        for row in table:
            lines.append(("      " + "  ".join([*(c.ljust(w) for c, w in zip(row, widths)), row[-1]])).rstrip())
    return lines


def _cmd_quarantine(args: argparse.Namespace) -> int:
    import json

    from neuroread.node.spool import Quarantine

    config = config_of(args)
    quarantine = Quarantine(config.storage.quarantine)
    entries = quarantine.list()
    if args.json:
        print(json.dumps([{"path": str(q.path), "origin": q.origin, "reason": q.reason, "stage": q.stage,
                           "at": q.at.isoformat()} for q in entries], indent=1))
        return 0
    if not entries:
        print(f"the quarantine {quarantine.root} is empty")
        return 0
    print(f"{len(entries)} files in the quarantine {quarantine.root} ({quarantine.size() / 1e6:.1f} MB), "
          "oldest first:")
    for q in entries:
        print(f"  {q.at:%Y-%m-%d %H:%M:%S} {q.path.relative_to(quarantine.root)}")
        print(f"      {q.stage}: {q.reason}")
    print("Each file is as it was received. Send it again once its sender is fixed (storescu FILE), "
          "or delete it with its .reason.json.")
    return 0



def add_commands(sub) -> None:
    p = with_config(sub.add_parser(
        "jobs",
        help="list jobs, show one with its audit trail and deliveries, retry a failed one, say why series made none",
        description="The node's jobs, from its job database (queue.database in the configuration). "
        "'show' prints a job's inputs, its audit trail and its deliveries from the outbox: per destination "
        "a summary, then each output object's state, attempts, DIMSE or HTTP status, next try and last error. "
        "'unrouted' lists the series no route took, those skipped because their model has no weights, "
        "and the studies a multi-series model could not "
        "use (a slot without a series), each with the reason.",
        epilog="examples:\n  neuroread jobs\n  neuroread jobs list --state failed\n  neuroread jobs show 12\n"
        "  neuroread jobs retry 12\n  neuroread jobs unrouted", formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("action", nargs="?", choices=("list", "show", "retry", "unrouted"), default="list")
    p.add_argument("id", nargs="?", type=int, help="job id (show, retry)")
    p.add_argument("--state", choices=("received", "queued", "running", "retrying", "done", "failed"),
                   help="only jobs in this state (list)")
    p.set_defaults(func=_cmd_jobs, log_level=QUIET)

    p = with_config(sub.add_parser(
        "quarantine", help="list the spooled files start-up could not use, with the reasons",
        description="Files the node moved out of its spool at start-up because they could not be assembled "
        "(unreadable, sequences nested too deep, a series already held under another study, UIDs that do not "
        "match the file's place in the spool). Nothing is deleted: each file is kept under storage.quarantine "
        "with a <name>.reason.json beside it.",
        epilog="examples:\n  neuroread quarantine list -c neuroread.yaml\n  neuroread quarantine list --json",
        formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("action", nargs="?", choices=("list",), default="list")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_quarantine, log_level=QUIET)
