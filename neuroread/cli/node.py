"""The node's commands: ``serve``, ``worker`` (a Celery worker of the distributed queue), ``run``
(the pipeline on files, or a study pulled over DICOMweb), ``models``, ``config check``,
``route explain``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import QUIET, config_of, registry_of, with_config


def _describe_outcome(outcome, spec) -> str:
    from neuroread.models import MultiLabel

    if isinstance(outcome, MultiLabel):
        return "multi-label " + ", ".join(f"{lb.name}@{spec.label(lb.name).threshold:.3g}" for lb in outcome.labels)
    return f"one of ({outcome.concept.meaning}) " + " | ".join(c.name for c in outcome.classes)


def card_headline(spec, metrics: dict[str, float]) -> dict[str, float]:
    """The card metrics ``neuroread models`` shows: macro F1/AUC of multi-label findings, each
    multi-class outcome's weighted (else plain) AUC and balanced accuracy, and a detector's
    lesion recall, false positives per scan and Dice, where the card has them."""
    keys = ["f1_macro", "auc_macro", "balanced_accuracy"]
    for outcome in spec.multi_class:
        auc = f"{outcome.name}.auc_weighted" if f"{outcome.name}.auc_weighted" in metrics else f"{outcome.name}.auc"
        keys += [auc, f"{outcome.name}.balanced_accuracy"]
    keys += ["detection.recall", "detection.fp_per_scan", "detection.dice"]
    return {k: metrics[k] for k in dict.fromkeys(keys) if k in metrics}


def _cmd_models(args: argparse.Namespace) -> int:
    from neuroread.node.app import make_catalog

    config = config_of(args)
    registry = registry_of(config)
    catalog = make_catalog(config, registry)
    disabled = config.disabled_models()
    for name in registry.names():
        spec = registry.spec(name)
        slots = ", ".join(f"{s.name}={s.modality}{'/' + '|'.join(s.sequences) if s.sequences else ''}" for s in spec.slots)
        ok, weights = catalog.status(name)
        effective = catalog.spec(name) if ok else spec.with_thresholds(catalog.overrides.get(name, {}))
        state = "switched off" if name in disabled else ("ready" if ok else "NO WEIGHTS: its series are skipped")
        print(f"{name} {spec.version} [{state}]: {spec.summary}\n  inputs: {slots}")
        for outcome in effective.outcomes:
            print(f"  outcome {outcome.name}: {_describe_outcome(outcome, effective)}")
        print(f"  weights: {weights}")
        if ok:
            shown = card_headline(spec, catalog.weights(name).meta.card.metrics)
            if shown:
                print("  card metrics: " + ", ".join(f"{k} {v:.3f}" for k, v in shown.items()))
    return 0


def _cmd_config_check(args: argparse.Namespace) -> int:
    import yaml

    from neuroread.node.deliver import destination_from_dict
    from neuroread.node.route import load_routes

    config = config_of(args)
    registry = registry_of(config)
    specs = {n: registry.spec(n) for n in registry.names()}
    config.check_models(specs)
    for name, dest in config.destinations.items():
        destination_from_dict({"name": name, **dest}, where=f"config: destinations.{name}")
    load_routes(list(config.routes), specs=specs or None, destinations=list(config.destinations) or None)
    from neuroread.node.app import make_catalog

    catalog = make_catalog(config, registry)
    for name in registry.names():
        ok, why = catalog.status(name)
        if not ok and name not in config.disabled_models():
            print(f"# warning: {why} (its series will be recorded as skipped)", file=sys.stderr)
    print(yaml.safe_dump(config.to_dict(hide_secrets=True), sort_keys=False), end="")
    print("# configuration is valid", file=sys.stderr)
    return 0


def _cmd_route_explain(args: argparse.Namespace) -> int:
    from neuroread.node.app import build_routes
    from neuroread.node.route import explain_path

    config = config_of(args)
    print(explain_path(Path(args.path), build_routes(config, registry_of(config))))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from neuroread.node.app import Node

    config = config_of(args)
    registry = registry_of(config)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with Node(config, registry) as node:
        web = f"; STOW-RS at {node.stow.url}/studies" if node.stow is not None else ""
        if node.status is not None:
            web += f"; status page at {node.status.url}"
        if node.distributed:
            web += "; jobs run by `neuroread worker` (queue.backend: celery)"
        print(f"neuroread node {config.node.ae_title} listening on {config.node.host}:{node.port}{web}; "
              f"models: {', '.join(registry.names()) or 'none registered'}; data under {config.storage.root}",
              flush=True)
        stop.wait()
        print("stopping", flush=True)
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from neuroread.node.app import run_worker

    config = config_of(args)
    run_worker(config, registry_of(config), concurrency=args.concurrency, name=args.name)
    return 0


_EPILOG_WORKER = """\
example (every machine mounts the node's storage at the paths the configuration names):
  # neuroread.yaml, shared by the node and its workers:
  #   storage: {root: /mnt/neuroread}
  #   queue: {backend: celery, broker: 'redis://queue-host:6379/0',
  #           database: 'postgresql+psycopg://neuroread@db-host/neuroread', workers: 2}
  neuroread serve -c neuroread.yaml            # receives, routes, publishes, delivers
  neuroread worker -c neuroread.yaml           # on each machine with a model's CPU or GPU

A worker takes job ids from Redis, claims each job in the job store with a lease it renews
while the job runs, reads the series from the shared spool, and writes the results to the
shared outbox; the node sends them. A worker killed mid-job loses the job to another worker
one lease (queue.lease_s) after its last heartbeat; a job that kills its worker every time
ends failed after queue.max_attempts. Stop it with SIGTERM (running jobs finish first).
"""


_EPILOG_RUN = """\
examples:
  neuroread run out/phantoms/ct-hemorrhage/ct-hemorrhage-s0-0000 --out results
  neuroread run --dicomweb http://127.0.0.1:8042/dicom-web --study 1.2.826.0.1.3680043.2.1125.1 --out results
  NEUROREAD_DICOMWEB_PASSWORD=secret neuroread run --dicomweb https://pacs/dicom-web --user neuro \\
      --ca-file pacs-ca.pem --study UID1 --study UID2 --out results --keep inputs
  PACS_TOKEN=eyJ... neuroread run --dicomweb https://pacs/dicom-web --token-env PACS_TOKEN --study UID --out results

With --dicomweb the series of each --study are found by QIDO-RS and fetched by WADO-RS into a
temporary folder (kept with --keep DIR: DIR/<Series>/<SOP>.dcm), then processed as files are.
Credentials never go on the command line: --user takes the password from the environment
variable NEUROREAD_DICOMWEB_PASSWORD; --token-env names the variable holding a bearer token.
An unknown study, refused credentials or an unreachable server end the command with exit 2.
"""

PASSWORD_ENV = "NEUROREAD_DICOMWEB_PASSWORD"


def _pull(args: argparse.Namespace, folder: Path) -> None:
    """Fetch every --study from --dicomweb into ``folder`` (neuroread.node.intake.dicomweb.pull_study)."""
    import os

    from neuroread.node.http import HttpAuth
    from neuroread.node.intake import pull_study
    from neuroread.node.spool import validate_uid

    studies = [validate_uid(uid, "--study") for uid in dict.fromkeys(args.study)]  # all, before any pull
    if args.user is not None:
        if not os.environ.get(PASSWORD_ENV):
            raise ValueError(f"--user {args.user}: put the password in the environment variable {PASSWORD_ENV}")
        auth = HttpAuth.from_keys(username=args.user, password_env=PASSWORD_ENV)
    elif args.token_env is not None:
        if not os.environ.get(args.token_env):
            raise ValueError(f"--token-env {args.token_env}: that environment variable is not set (or empty)")
        auth = HttpAuth.from_keys(token_env=args.token_env)
    else:
        auth = HttpAuth()
    for study in studies:
        files = pull_study(args.dicomweb, study, folder, auth=auth, ca_file=args.ca_file, progress=not args.quiet)
        print(f"pulled {len(files)} instances of {len({f.parent for f in files})} series of study {study} "
              f"from {args.dicomweb}")


def _cmd_run(args: argparse.Namespace) -> int:
    import tempfile

    from neuroread.node.app import run_files
    from neuroread.node.intake import DicomWebError

    if bool(args.paths) == bool(args.dicomweb):
        raise ValueError("give either PATH... (files or folders) or --dicomweb URL with --study UID, not both")
    web_only = {"--study": args.study, "--keep": args.keep, "--user": args.user, "--token-env": args.token_env,
                "--ca-file": args.ca_file}
    if not args.dicomweb and any(web_only.values()):
        raise ValueError(f"{', '.join(k for k, v in web_only.items() if v)} only go with --dicomweb")
    if args.dicomweb and not args.study:
        raise ValueError("--dicomweb needs --study UID (repeat it for several studies)")
    config = config_of(args)
    registry = registry_of(config)
    if args.dicomweb:
        with tempfile.TemporaryDirectory(prefix="neuroread-pull-") as tmp:
            folder = Path(args.keep) if args.keep else Path(tmp)
            try:
                _pull(args, folder)
            except DicomWebError as exc:
                print(f"neuroread run: error: {exc}", file=sys.stderr)
                return 2
            written = run_files([folder], Path(args.out), config, registry)
    else:
        written = run_files([Path(p) for p in args.paths], Path(args.out), config, registry)
    if not written:
        print("no results: no series was routed to a model that could use it (see the log for each reason)")
        return 1
    print(f"wrote {len(written)} result objects under {args.out}")
    for path in sorted(written):
        print(f"  {path}")
    return 0



def add_commands(sub) -> None:
    p = with_config(sub.add_parser(
        "serve", help="run the node: receive, route, infer, deliver",
        description="Run the DICOM node until interrupted (Ctrl-C or SIGTERM): it receives series over "
        "C-STORE (and over STOW-RS when the configuration has a 'dicomweb' section), routes complete series "
        "to models, and delivers the results to the configured destinations.",
        epilog="example:\n  neuroread serve -c neuroread.yaml\n  neuroread replay out/phantoms/ct-hemorrhage "
        "--to 127.0.0.1:11112   # from another terminal", formatter_class=argparse.RawDescriptionHelpFormatter))
    p.set_defaults(func=_cmd_serve)

    p = with_config(sub.add_parser(
        "worker", help="run jobs of a node whose queue is celery (scale out to more processes or machines)",
        description="Run a Celery worker for the node configured in -c: a pool of queue.workers processes "
        "(or --concurrency), each loading the models once and running the jobs the node publishes to "
        "queue.broker (Redis), claimed in the shared job store (queue.database, PostgreSQL across machines). "
        "Needs queue.backend: celery.",
        epilog=_EPILOG_WORKER, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("--concurrency", type=int, metavar="N", help="pool processes (default: queue.workers)")
    p.add_argument("--name", metavar="NAME", help="the Celery node name (default: neuroread-<pid>@<host>)")
    p.set_defaults(func=_cmd_worker)

    p = with_config(sub.add_parser(
        "run", help="one-shot: the same pipeline on files, or on studies pulled over DICOMweb",
        description="Route, infer and encode the series under PATH... (or of each --study pulled from a "
        "DICOMweb server with QIDO-RS and WADO-RS) and write the result objects to DIR "
        "(DIR/<Study>/<Series>/<SOP>.dcm); exits 1 when no series could be processed, 2 on an error.",
        epilog=_EPILOG_RUN, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("paths", metavar="PATH", nargs="*", help="DICOM files or folders (or use --dicomweb)")
    p.add_argument("--out", required=True, metavar="DIR", help="where the result objects go")
    web = p.add_argument_group("pull from DICOMweb")
    web.add_argument("--dicomweb", metavar="URL", help="the DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web")
    web.add_argument("--study", metavar="UID", action="append", default=[],
                     help="Study Instance UID to pull and process (repeatable)")
    who = web.add_mutually_exclusive_group()
    who.add_argument("--user", metavar="NAME", help=f"HTTP basic auth user; the password comes from ${PASSWORD_ENV}")
    who.add_argument("--token-env", metavar="VAR", help="environment variable holding a bearer token")
    web.add_argument("--ca-file", metavar="PEM", help="CA bundle to trust for https")
    web.add_argument("--keep", metavar="DIR", help="pull into DIR and keep the files (default: a temporary folder)")
    web.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_run)

    p = with_config(sub.add_parser(
        "models", help="list the registered models: on or off, their weights, outcomes and thresholds",
        description="List the registered models: whether each is switched on (models.NAME.enabled), which "
        "weights it runs with (the configured file, else the demo weights committed with it) or why it has "
        "none (then the node records its series as skipped), its inputs, its outcomes with the effective "
        "thresholds (configured, else the weights' card, else 0.5) and the card's headline metrics.",
        epilog="examples:\n  neuroread models\n  neuroread models -c node.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter))
    p.set_defaults(func=_cmd_models, log_level=QUIET)

    p = sub.add_parser("config", help="check a configuration file",
                       description="Validate a YAML configuration and print the effective settings.")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    p = with_config(csub.add_parser("check", help="validate and print the effective configuration",
                                    description="Validate the configuration (keys, values, models, routes, "
                                    "destinations) and print the effective settings, defaults included."))
    p.set_defaults(func=_cmd_config_check, log_level=QUIET)

    p = sub.add_parser("route", help="routing tools", description="Routing tools.")
    rsub = p.add_subparsers(dest="route_command", metavar="ACTION", required=True)
    p = with_config(rsub.add_parser(
        "explain", help="say which route matches each series under PATH, and why",
        description="Read the series under PATH (a file or folder) and print, for each, its MR sequence class "
        "and which route matched or why none did.",
        epilog="example:\n  neuroread route explain out/phantoms/ms-csvd/ms-csvd-s0-0000",
        formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("path", metavar="PATH")
    p.set_defaults(func=_cmd_route_explain, log_level=QUIET)
