"""The node's jobs as JSON, for HTTP front ends (the Orthanc plugin's ``/neuroread/`` routes).

Each function returns ``(HTTP status, JSON-able body)``; errors are ``{"error": message}`` with
404 (no such job), 409 (a retry of a job that has not failed) or 400 (a bad parameter).
Nothing here names a patient: jobs carry UIDs, model names and reasons only.

==========================================  ==============================================
route (under the front end's prefix)        body
==========================================  ==============================================
``GET jobs[?state=failed]``                 ``{"jobs": [job, ...]}``, oldest first
``GET jobs/{id}``                           the job, its ``audit`` trail (each event with
                                            its detail) and its ``deliveries`` (each output
                                            per destination: state, attempts, last error)
``POST jobs/{id}/retry``                    the job, queued again (only a failed one)
``GET unrouted``                            series no route took, studies a multi-series
                                            model could not use, each with the reason
==========================================  ==============================================
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from neuroread.node.deliver import Outbox
from neuroread.node.jobs import STATES, Job, JobStateError, JobStore

from .routing import routing_records


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def job_json(job: Job) -> dict[str, Any]:
    return {"id": job.id, "model": job.model, "version": job.model_version, "state": job.state,
            "reason": job.reason, "attempts": job.attempts, "inputs": job.inputs,
            "instances": {slot: len(uids) for slot, uids in job.instances.items()},
            "outputs": job.outputs, "created": _time(job.created), "updated": _time(job.updated)}


def list_jobs(store: JobStore, state: str | None = None) -> tuple[int, dict[str, Any]]:
    if state is not None and state not in STATES:
        return 400, {"error": f"state must be one of {', '.join(STATES)}, got {state!r}"}
    return 200, {"jobs": [job_json(j) for j in store.list(state)]}


def show_job(store: JobStore, outbox: Outbox, job_id: int) -> tuple[int, dict[str, Any]]:
    try:
        job = store.get(job_id)
    except KeyError:
        return 404, {"error": f"no job {job_id}"}
    body = job_json(job)
    body["audit"] = [{"at": _time(e.at), "event": e.event, "detail": e.detail} for e in store.audit_trail(job_id)]
    body["deliveries"] = [{"destination": i.destination, "sop_instance_uid": i.sop_instance_uid,
                           "series_uid": i.series_uid, "state": i.state, "attempts": i.attempts,
                           "status_code": i.status_code, "last_error": i.last_error}
                          for i in outbox.status(str(job_id))]
    return 200, body


def retry_job(store: JobStore, job_id: int) -> tuple[int, dict[str, Any]]:
    try:
        return 200, job_json(store.retry(job_id))
    except KeyError:
        return 404, {"error": f"no job {job_id}"}
    except JobStateError as exc:  # not failed: "job 3 is done; retry needs one of ('failed',)"
        return 409, {"error": str(exc)}


def unrouted(store: JobStore) -> tuple[int, dict[str, Any]]:
    series, studies = routing_records(store.engine)
    return 200, {"series": [{**r, "at": _time(r["at"])} for r in series],
                 "studies": [{**r, "at": _time(r["at"])} for r in studies]}
