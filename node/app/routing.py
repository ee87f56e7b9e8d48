"""Routing records: what became of each complete series (routed, or unrouted and why) and of
each (study, multi-series model) slot filling (routed with its job, or incomplete and why).

Kept in the node's database (tables ``routing`` and ``study_routing`` of
:mod:`neuroread.node.schema`); read by ``neuroread jobs unrouted`` and the Orthanc plugin's
``/neuroread/unrouted``.
"""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from neuroread.node.schema import create_all, routing_table, study_routing_table, utc_now


class RoutingRecords:
    """The routing records in the database of ``engine`` (tables created if missing)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        create_all(engine)

    def record_series(self, series_uid: str, study_uid: str, state: str, reason: str) -> None:
        values = dict(study_uid=study_uid, state=state, reason=reason, at=utc_now())
        with self.engine.begin() as conn:
            n = conn.execute(routing_table.update().where(routing_table.c.series_uid == series_uid)
                             .values(**values)).rowcount
            if n == 0:
                conn.execute(routing_table.insert().values(series_uid=series_uid, **values))

    def series(self, series_uid: str) -> dict[str, Any] | None:
        """The routing record of a series: state (routed/unrouted/skipped) and reason; None if not seen."""
        with self.engine.connect() as conn:
            row = conn.execute(routing_table.select().where(routing_table.c.series_uid == series_uid)).mappings().first()
        return dict(row) if row else None

    def record_study(self, study_uid: str, model: str, state: str, reason: str, job_id: int | None) -> None:
        values = dict(state=state, reason=reason, job_id=job_id, at=utc_now())
        key = (study_routing_table.c.study_uid == study_uid) & (study_routing_table.c.model == model)
        with self.engine.begin() as conn:
            if conn.execute(study_routing_table.update().where(key).values(**values)).rowcount == 0:
                conn.execute(study_routing_table.insert().values(study_uid=study_uid, model=model, **values))

    def study(self, study_uid: str) -> dict[str, dict[str, Any]]:
        """Per multi-series model, the study's last slot filling: state (routed/incomplete),
        reason (each slot's series, or what is missing) and job id; empty if none was made."""
        with self.engine.connect() as conn:
            rows = conn.execute(study_routing_table.select()
                                .where(study_routing_table.c.study_uid == study_uid)).mappings().all()
        return {row["model"]: dict(row) for row in rows}


def routing_records(engine: sa.Engine) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What did not become a job, newest first: series recorded ``unrouted`` (no route took them)
    or ``skipped`` (their models have no weights) and (study, model) pairs recorded ``incomplete``
    or ``skipped``, each with its reason (``neuroread jobs unrouted``)."""
    if not sa.inspect(engine).has_table(routing_table.name):
        return [], []  # a database the node has not run on yet
    with engine.connect() as conn:
        series = conn.execute(routing_table.select().where(routing_table.c.state.in_(("unrouted", "skipped")))
                              .order_by(routing_table.c.at.desc())).mappings().all()
        studies = conn.execute(study_routing_table.select()
                               .where(study_routing_table.c.state.in_(("incomplete", "skipped")))
                               .order_by(study_routing_table.c.at.desc())).mappings().all()
    return [dict(r) for r in series], [dict(r) for r in studies]
