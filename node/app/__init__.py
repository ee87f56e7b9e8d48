"""The app: the stages wired together.

:class:`Node` (:mod:`.node`) is the running node; :func:`run_job` (:mod:`.job`) the job function,
with its dependencies passed in; :func:`run_files` the same pipeline on files without a network;
:mod:`.build` makes the parts from the configuration; :mod:`.routing` keeps the routing
records; :mod:`.job_queries` answers the CLI's and the Orthanc plugin's questions about jobs.
"""
from .build import (
    build_destinations,
    build_routes,
    decide,
    encode_info,
    make_catalog,
    make_runner,
    multi_series_specs,
)
from .distributed import run_worker, worker_factory
from .job import JobContext, PipelineError, Processed, process_inputs, run_job
from .job_queries import job_json, list_jobs, retry_job, show_job, unrouted
from .node import Node
from .offline import run_files
from .routing import RoutingRecords, routing_records

__all__ = [
    "JobContext",
    "Node",
    "PipelineError",
    "Processed",
    "RoutingRecords",
    "build_destinations",
    "build_routes",
    "decide",
    "encode_info",
    "job_json",
    "list_jobs",
    "make_catalog",
    "make_runner",
    "multi_series_specs",
    "process_inputs",
    "retry_job",
    "routing_records",
    "run_files",
    "run_job",
    "run_worker",
    "show_job",
    "unrouted",
    "worker_factory",
]
