"""The node's database schema, in one place: every table of the one database the node keeps
(SQLite by default, PostgreSQL when configured), described once on one :data:`metadata`.

Stages own their logic and their engines, not their tables: the job store, the outbox, the
Orthanc intake and the routing records each import their tables from here, and
:func:`create_all` (what every one of them calls on the engine it is given) creates the whole
schema, so no two descriptions of one database can drift apart.

| table | written by |
| --- | --- |
| ``series``, ``jobs``, ``audit``, ``dispatch`` | the job store (:mod:`neuroread.node.jobs`) |
| ``routing``, ``study_routing`` | the app's routing records (:mod:`neuroread.node.app.routing`) |
| ``deliver_outbox``, ``deliver_outbox_jobs`` | the outbox (:mod:`neuroread.node.deliver`) |
| ``orthanc_intake``, ``orthanc_intake_unstable`` | the Orthanc intake (:mod:`neuroread.node.intake`) |

Times in the job tables are aware UTC (:class:`UTCDateTime`); the outbox keeps epoch seconds.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(sa.TypeDecorator):
    """Aware UTC datetimes on every backend (SQLite keeps naive text, PostgreSQL timestamptz)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the job store keeps aware UTC times")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


metadata = sa.MetaData()

series_table = sa.Table(
    "series", metadata,
    sa.Column("series_uid", sa.String(64), primary_key=True),
    sa.Column("study_uid", sa.String(64), nullable=False, index=True),
    sa.Column("instances", sa.Integer, nullable=False),
    sa.Column("first_received", UTCDateTime, nullable=False),
    sa.Column("last_received", UTCDateTime, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
)

jobs_table = sa.Table(
    "jobs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_key", sa.String(64), nullable=False, unique=True),
    sa.Column("model", sa.String(64), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("inputs", sa.JSON, nullable=False),
    sa.Column("instances", sa.JSON, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", UTCDateTime, nullable=True),
    sa.Column("lease_owner", sa.String(128), nullable=True),
    sa.Column("lease_expires", UTCDateTime, nullable=True),
    sa.Column("outputs", sa.JSON, nullable=True),
    sa.Column("created", UTCDateTime, nullable=False),
    sa.Column("updated", UTCDateTime, nullable=False),
    sa.Index("ix_jobs_state_next", "state", "next_attempt_at"),
)

audit_table = sa.Table(
    "audit", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.Integer, nullable=False, index=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("detail", sa.JSON, nullable=False),
)

# The distributed queue's bookkeeping: when each job id was last published to the broker, so
# that the node's sweeper re-publishes a claimable job only when its message may be lost.
dispatch_table = sa.Table(
    "dispatch", metadata,
    sa.Column("job_id", sa.Integer, primary_key=True),
    sa.Column("published_at", UTCDateTime, nullable=False),
    sa.Column("count", sa.Integer, nullable=False),
)


# -- routing records (neuroread.node.app.routing) ----------------------------------------
routing_table = sa.Table(
    "routing", metadata,
    sa.Column("series_uid", sa.String(64), primary_key=True),
    sa.Column("study_uid", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # routed | unrouted
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)
study_routing_table = sa.Table(
    "study_routing", metadata,
    sa.Column("study_uid", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(64), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),  # routed (job_id set) | incomplete
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("job_id", sa.Integer, nullable=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)


# -- the outbox (neuroread.node.deliver) --------------------------------------------------
outbox_table = sa.Table(
    "deliver_outbox", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("destination", sa.String(64), nullable=False),
    sa.Column("sop_instance_uid", sa.String(64), nullable=False),
    sa.Column("sop_class_uid", sa.String(64), nullable=False),
    sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
    sa.Column("study_uid", sa.String(64), nullable=False),
    sa.Column("series_uid", sa.String(64), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("sent_at", sa.Float),
    sa.Column("status_code", sa.Integer),
    sa.Column("last_error", sa.Text),
    sa.UniqueConstraint("destination", "sop_instance_uid", name="uq_deliver_outbox_dest_sop"),
    sa.Index("ix_deliver_outbox_due", "state", "next_attempt_at"),
)
outbox_jobs_table = sa.Table(
    "deliver_outbox_jobs", metadata,
    sa.Column("job_id", sa.String(128), primary_key=True),
    sa.Column("item_id", sa.Integer, sa.ForeignKey("deliver_outbox.id"), primary_key=True),
)


# -- the Orthanc intake (neuroread.node.intake) --------------------------------------------
orthanc_cursor_table = sa.Table(
    "orthanc_intake", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("last_seq", sa.Integer, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)


orthanc_unstable_table = sa.Table(
    "orthanc_intake_unstable", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("series_id", sa.String(64), primary_key=True),  # Orthanc's series id
    sa.Column("seq", sa.Integer, nullable=False),  # of its NewSeries change
)


# Any constant: the key of the PostgreSQL advisory lock that serialises schema creation.
_SCHEMA_LOCK = 0x6E726561  # "nrea"


def create_all(engine: sa.Engine) -> None:
    """Create every table that does not exist yet (idempotent; existing tables are left as they are).

    Safe when several processes start at once on an empty database (a node and its workers):
    "create if missing" is a check then a create, so on PostgreSQL the processes take turns
    under a transaction-scoped advisory lock; elsewhere (SQLite) a process that lost the race
    (the table appeared between its check and its create) checks again.
    """
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
            metadata.create_all(conn)
        return
    for attempt in range(3):
        try:
            metadata.create_all(engine)
            return
        except (sa.exc.OperationalError, sa.exc.IntegrityError, sa.exc.ProgrammingError):
            if attempt == 2:
                raise
