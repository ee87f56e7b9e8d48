"""neuroread inside Orthanc: an orthanc-python plugin script (``"PythonScript"`` in Orthanc's
configuration; see ``orthanc/orthanc.json`` and the README's "Run inside Orthanc").

Series that become stable in Orthanc go through neuroread's own pipeline (spool → route →
queue → infer → encode → validate → outbox → deliver: :class:`neuroread.node.app.node.Node` without its
DIMSE listener, fed by :class:`neuroread.node.intake.orthanc.OrthancIntake`); the results are stored back
into this Orthanc through its REST API (in-process, no credentials needed) and, when
configured, forwarded by Orthanc to its DICOM modalities or DICOMweb servers, and to the
destinations of the node's YAML (C-STORE, STOW-RS, folder).

Nothing heavy runs on Orthanc's threads: the change callback only wakes the intake's thread;
models run on the node's worker threads; REST calls read the job database. A model that fails
marks its job failed (``GET /neuroread/jobs/{id}`` says why) and Orthanc keeps serving.

REST routes (Orthanc's authentication applies):

    GET  /neuroread/jobs[?state=failed]   the jobs
    GET  /neuroread/jobs/{id}             one job with its audit trail and deliveries
    POST /neuroread/jobs/{id}/retry       queue a failed job again
    GET  /neuroread/unrouted              series no model took, with the reasons

The plugin runs in Orthanc's embedded Python (Debian: the system Python 3.11), so the
``NeuroRead.PythonPath`` setting names neuroread's environment (its site-packages), added as a
site directory (``site.addsitedir``: its ``.pth`` files, e.g. an editable install's, are
honoured) before anything of neuroread is imported. The checkout itself is not put on the
path: only the ``neuroread`` namespace enters Orthanc's shared interpreter.
"""
import json
import logging
import site
import sys

import orthanc

SECTION = "NeuroRead"
KNOWN = ("Config", "PythonPath", "StoreResults", "ForwardToModalities", "ForwardToDicomWebServers", "StartAt",
         "PollSeconds")


class _OrthancLog(logging.Handler):
    """Python logging into Orthanc's log (its own levels and files)."""

    def emit(self, record):
        text = "neuroread: " + self.format(record)
        if record.levelno >= logging.ERROR:
            orthanc.LogError(text)
        elif record.levelno >= logging.WARNING:
            orthanc.LogWarning(text)
        else:
            orthanc.LogInfo(text)


def _settings():
    section = json.loads(orthanc.GetConfiguration()).get(SECTION)
    if not isinstance(section, dict):
        raise RuntimeError(f"neuroread plugin: Orthanc's configuration has no {SECTION!r} section "
                           "(see orthanc/orthanc.json in neuroread's checkout)")
    for key in section:
        if key not in KNOWN:
            raise RuntimeError(f"neuroread plugin: {SECTION}.{key}: unknown key (known: {', '.join(KNOWN)})")
    paths = section.get("PythonPath", [])
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise RuntimeError(f"neuroread plugin: {SECTION}.PythonPath must be a list of folders")
    return section


def _error_status(exc):
    """The HTTP status Orthanc would answer for an OrthancException (args: code, message)."""
    code = exc.args[0] if exc.args else None
    if code == orthanc.ErrorCode.UNKNOWN_RESOURCE:
        return 404
    if code in (orthanc.ErrorCode.BAD_FILE_FORMAT, orthanc.ErrorCode.BAD_REQUEST,
                orthanc.ErrorCode.INEXISTENT_TAG, orthanc.ErrorCode.BAD_PARAMETER_TYPE):
        return 400
    return 500


def _add_site_dirs(paths):
    """Each folder as a site directory, ahead of Orthanc's own: its ``.pth`` files are honoured
    (an editable install of neuroread is one, a finder that maps ``neuroread.*`` to the
    checkout), and its packages win over the system's (the environment's pinned numpy, torch)."""
    before = list(sys.path)
    for path in paths:
        site.addsitedir(path)
    added = [p for p in sys.path if p not in before]
    sys.path[:] = added + before


SETTINGS = _settings()
_add_site_dirs(SETTINGS.get("PythonPath", []))

try:  # only importable once PythonPath is on sys.path
    from neuroread.models import default_registry
    from neuroread.node.app import Node, list_jobs, retry_job, show_job, unrouted
    from neuroread.node.config import load_config
    from neuroread.node.deliver import OrthancDestination
    from neuroread.node.intake import OrthancGone, OrthancIntake, OrthancUnavailable
except ImportError as exc:
    raise RuntimeError(f"neuroread plugin: cannot import {exc.name or exc}: {SECTION}.PythonPath must list "
                       "neuroread's environment (its .venv/lib/python3.11/site-packages), where neuroread "
                       "is installed; `neuroread orthanc-config` writes it") from exc

logger = logging.getLogger("neuroread.orthanc")
_handler = _OrthancLog()
_handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
logging.getLogger("neuroread").addHandler(_handler)  # one logger tree: neuroread.*
logging.getLogger("neuroread").setLevel(logging.INFO)


def _get(path):
    try:
        return orthanc.RestApiGet(path)
    except orthanc.OrthancException as exc:
        if _error_status(exc) == 404:
            raise OrthancGone(f"GET {path}: {exc}") from exc
        raise OrthancUnavailable(f"GET {path}: {exc}") from exc


def _post(method, path, body):
    """The orthanc destination's transport: Orthanc's REST API in-process."""
    if method != "POST":
        return 405, f"{method} not supported in-process".encode()
    try:
        return 200, orthanc.RestApiPost(path, body)
    except orthanc.OrthancException as exc:
        return _error_status(exc), str(exc).encode()


def _build():
    config_path = SETTINGS.get("Config")
    config = load_config(config_path)
    registry = default_registry(config.plugins)
    extra = []
    if SETTINGS.get("StoreResults", True):
        extra.append(OrthancDestination(name="orthanc", url="orthanc://local", rest=_post,
                                        modalities=tuple(SETTINGS.get("ForwardToModalities", [])),
                                        dicomweb_servers=tuple(SETTINGS.get("ForwardToDicomWebServers", []))))
    node = Node(config, registry, listen=False, extra_destinations=extra)
    intake = OrthancIntake(node, _get, start_at=SETTINGS.get("StartAt", "last"),
                           poll_s=float(SETTINGS.get("PollSeconds", 5)))
    logger.info("configured from %s: models %s, destinations %s", config_path or "defaults",
                ", ".join(registry.names()) or "none", ", ".join(d.name for d in node.destinations) or "none")
    return node, intake


NODE, INTAKE = _build()


def _on_change(change_type, level, resource):
    if change_type == orthanc.ChangeType.ORTHANC_STARTED:
        NODE.start()
        INTAKE.start()
    elif change_type in (orthanc.ChangeType.STABLE_SERIES, orthanc.ChangeType.STABLE_STUDY):
        INTAKE.wake()
    elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
        # Orthanc waits for this callback: a job still running after a few seconds is left
        # "running" and recovered (run again) at the next start; its results are idempotent.
        INTAKE.stop(timeout=10)
        NODE.stop(timeout=5)


def _answer(output, status, body):
    if status == 200:
        output.AnswerBuffer(json.dumps(body, indent=2), "application/json")
    else:
        text = json.dumps(body)  # orthanc-python 4.0 takes (status, str, its length)
        output.SendHttpStatus(status, text, len(text.encode()))


def _route(method, answer):
    """A REST callback that takes only ``method`` and answers ``answer(request)``: (status, body)."""
    def callback(output, uri, **request):
        if request["method"] != method:
            output.SendMethodNotAllowed(method)
            return
        _answer(output, *answer(request))
    return callback


orthanc.RegisterOnChangeCallback(_on_change)
orthanc.RegisterRestCallback("/neuroread/jobs", _route(
    "GET", lambda request: list_jobs(NODE.store, request.get("get", {}).get("state"))))
orthanc.RegisterRestCallback("/neuroread/jobs/([0-9]+)", _route(
    "GET", lambda request: show_job(NODE.store, NODE.outbox, int(request["groups"][0]))))
orthanc.RegisterRestCallback("/neuroread/jobs/([0-9]+)/retry", _route(
    "POST", lambda request: retry_job(NODE.store, int(request["groups"][0]))))
orthanc.RegisterRestCallback("/neuroread/unrouted", _route("GET", lambda request: unrouted(NODE.store)))
