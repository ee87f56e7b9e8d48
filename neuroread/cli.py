"""The ``neuroread`` command line.

Each subcommand is a small function taking parsed arguments; :func:`main` takes ``argv`` so
tests can call it in-process. Training-side commands (``phantoms``, ``train``, ``train-demo``)
import ``training`` only when they run, so the node's own commands never pay for it.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from neuroread.node.deliver import OutboxItem

logger = logging.getLogger("neuroread")

_EPILOG_PHANTOMS = """\
examples:
  neuroread phantoms ct-hemorrhage --n 20 --seed 1 --out phantoms/ct
  neuroread phantoms all --n 4 --out phantoms --preview phantoms/preview.png
  neuroread phantoms ms-csvd --n 100 --balance ms=0.3,csvd=0.7 --size full --out data/ms

Each study is a folder (one sub-folder per series, one DICOM file per instance) with
truth.json and masks/*.nii.gz on the series' own grids; the set has a manifest.csv.
Same task, seed and size give byte-identical files. Data are synthetic: not patients.
"""


def _cmd_phantoms(args: argparse.Namespace) -> int:
    from neuroread.training.phantoms.registry import generate_set, get_task, task_names

    tasks = task_names() if args.task == "all" else [args.task]
    if args.balance and args.task == "all":
        raise ValueError("--balance names one task's classes; use it with a single task")
    for t in tasks:
        get_task(t)  # fail early on an unknown name, before writing anything
    out = Path(args.out)
    set_dirs = []
    started = time.perf_counter()
    for t in tasks:
        set_dir = out / t if args.task == "all" else out
        generate_set(t, args.n, args.seed, set_dir, size=args.size, balance=args.balance,
                     workers=args.workers, progress=not args.quiet)
        set_dirs.append(set_dir)
    elapsed = time.perf_counter() - started
    print(f"wrote {args.n * len(tasks)} {args.size} studies in {elapsed:.1f} s under {out}")
    for d in set_dirs:
        print(f"  {d / 'manifest.csv'}")
    if args.preview:
        from neuroread.training.phantoms.preview import preview

        png = preview(set_dirs, Path(args.preview))
        print(f"preview: {png}")
    return 0


_EPILOG_TRAIN = """\
examples:
  # a quick run on phantoms with the small demo network (minutes on a laptop CPU)
  neuroread phantoms ct-hemorrhage --n 40 --seed 1 --out data/ct
  neuroread train ct-hemorrhage --data data/ct --format phantoms --preset demo \\
      --folds 1 --pretrain-epochs 2 --epochs 20 --batch-size 8 --out ct-demo.pt

  # the paper's setting on RSNA (5 folds, batch 256, 100 epochs; a GPU is advised)
  neuroread train ct-hemorrhage --format rsna --data rsna/stage_2_train \\
      --labels-csv rsna/stage_2_train.csv --backbone-weights vgg16-397923af.pth \\
      --folds 5 --batch-size 256 --device cuda --out ct-hemorrhage-rsna.pt

  # CQ500's nine labels (10 folds, batch 32 as in the paper)
  neuroread train ct-hemorrhage-cq500 --format cq500 --data cq500 --labels-csv cq500/reads.csv \\
      --backbone-weights vgg16-397923af.pth --folds 10 --device cuda --out ct-hemorrhage-cq500.pt

Data formats:
  phantoms  a folder written by 'neuroread phantoms' (study and per-slice labels from truth.json)
  manifest  a CSV: study folder, one 0/1 column per label, optional series_instance_uid,
            slice_labels (CSV per study) and group (patient) columns
  rsna      the RSNA Intracranial Hemorrhage layout: --data is the DICOM folder,
            --labels-csv the ID,Label file (labels per image, aggregated to the series)
  cq500     the CQ500 layout: --data holds the study folders, --labels-csv the reads.csv
            (default DATA/reads.csv); a label is set when most readers marked it

--folds K >= 2 reports the mean of K-fold cross-validation (patients kept whole) and saves a
model trained on all series; --folds 1 keeps a held-out fifth for the metrics. The card in
the checkpoint holds the network configuration, the data description and these metrics.
"""

_EPILOG_TRAIN_DEMO = """\
examples:
  neuroread train-demo                       # ct-hemorrhage, to the default demo weights path
  neuroread train-demo ct-hemorrhage-cq500
  NEUROREAD_WEIGHTS=weights neuroread train-demo ct-hemorrhage
  neuroread train-demo ct-hemorrhage --out /tmp/ct-demo.pt --cache /tmp/phantoms

It makes a fixed set of 256 small head-CT phantoms (cached, reused next time), keeps a held-out
fifth, trains the small 'demo' network on the rest on this CPU (its encoder on the labelled
slices first, then the rest of DrCT2; 12 to 15 minutes on 2 cores) and writes the checkpoint
with the held-out metrics. Same inputs, same weights. The weights
come from synthetic data and are marked as demo weights in every result: not for clinical use.
"""


def _count(minimum: int):
    """An argparse type: an integer >= ``minimum`` (argparse then names the option in its error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def _read_training_data(args: argparse.Namespace, labels: tuple[str, ...]) -> tuple[list, str]:
    """The records of ``--data`` in ``--format``, and a line saying where they come from."""
    from neuroread.training.datasets import read_cq500, read_manifest, read_phantoms, read_rsna

    data = Path(args.data)
    if not data.exists():
        raise FileNotFoundError(f"--data {data} does not exist")
    if args.labels_csv and args.format not in ("rsna", "cq500"):
        raise ValueError(f"--labels-csv applies to --format rsna or cq500, not {args.format}")
    if args.format == "phantoms":
        return read_phantoms(data, labels), f"neuroread phantoms under {data}"
    if args.format == "manifest":
        return read_manifest(data, labels), f"manifest {data}"
    if args.format == "rsna":
        if not args.labels_csv:
            raise ValueError("--format rsna needs --labels-csv (the challenge's ID,Label file, e.g. stage_2_train.csv)")
        csv_path = Path(args.labels_csv)
        return (read_rsna(csv_path, data, labels, progress=not args.quiet),
                f"RSNA Intracranial Hemorrhage layout: labels {csv_path}, images {data}")
    csv_path = Path(args.labels_csv) if args.labels_csv else data / "reads.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"--labels-csv {csv_path} does not exist (CQ500's reads.csv)")
    return (read_cq500(csv_path, data, labels, progress=not args.quiet),
            f"CQ500 layout: reads {csv_path}, studies {data}")


def _print_report(report) -> None:
    if report.cross_validation is not None:
        for i, fold in enumerate(report.cross_validation.folds, start=1):
            print(f"  fold {i}: {fold.summary()}")
        m = report.metrics
        print(f"  mean of {len(report.cross_validation.folds)} folds: macro F1 {m.get('f1_macro', float('nan')):.3f}, "
              f"AUC {m.get('auc_macro', float('nan')):.3f}")
    if report.holdout is not None:
        print(f"  held-out: {report.holdout.summary()}")
    print(f"wrote {report.path} (sha256 {report.sha256}) in {report.seconds:.0f} s")


def _cmd_train(args: argparse.Namespace) -> int:
    from neuroread.training.train import TrainConfig, train

    config = TrainConfig(model=args.model, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                         threads=args.threads, augment=not args.no_augment, network=args.preset,
                         backbone_weights=Path(args.backbone_weights) if args.backbone_weights else None,
                         pretrain_epochs=args.pretrain_epochs, device=args.device)
    records, source = _read_training_data(args, config.labels)
    print(f"training {args.model} ({args.preset} network) on {len(records)} series: {source}")
    report = train(records, config, Path(args.out), source=source, folds=args.folds, progress=not args.quiet)
    _print_report(report)
    return 0


def _cmd_train_demo(args: argparse.Namespace) -> int:
    from neuroread.training.demo import train_demo
    report = train_demo(args.model, Path(args.out) if args.out else None, progress=not args.quiet,
                        cache_dir=Path(args.cache) if args.cache else None)
    _print_report(report)
    return 0


def _config(args: argparse.Namespace):
    from neuroread.node.config import load_config

    return load_config(Path(args.config) if args.config else None)


def _registry(config):
    """The product models plus the configuration's plugins."""
    from neuroread.models import default_registry

    return default_registry(config.plugins)


def _cmd_models(args: argparse.Namespace) -> int:
    registry = _registry(_config(args))
    for name in registry.names():
        spec = registry.spec(name)
        slots = ", ".join(f"{s.name}={s.modality}{'/' + '|'.join(s.sequences) if s.sequences else ''}" for s in spec.slots)
        labels = ", ".join(lb.name for lb in spec.labels)
        print(f"{name} {spec.version}: {spec.summary}\n  inputs: {slots}\n  labels: {labels}")
    return 0


def _cmd_config_check(args: argparse.Namespace) -> int:
    import yaml

    from neuroread.node.deliver import destination_from_dict
    from neuroread.node.route import load_routes

    config = _config(args)
    registry = _registry(config)
    specs = {n: registry.spec(n) for n in registry.names()}
    config.check_models(specs)
    for name, dest in config.destinations.items():
        destination_from_dict({"name": name, **dest}, where=f"config: destinations.{name}")
    load_routes(list(config.routes), specs=specs or None, destinations=list(config.destinations) or None)
    print(yaml.safe_dump(config.to_dict(hide_secrets=True), sort_keys=False), end="")
    print("# configuration is valid", file=sys.stderr)
    return 0


def _cmd_route_explain(args: argparse.Namespace) -> int:
    from neuroread.node.app import build_routes
    from neuroread.node.route import explain_path

    config = _config(args)
    print(explain_path(Path(args.path), build_routes(config, _registry(config))))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from neuroread.node.app import Node

    config = _config(args)
    registry = _registry(config)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with Node(config, registry) as node:
        web = f"; STOW-RS at {node.stow.url}/studies" if node.stow is not None else ""
        print(f"neuroread node {config.node.ae_title} listening on {config.node.host}:{node.port}{web}; "
              f"models: {', '.join(registry.names()) or 'none registered'}; data under {config.storage.root}",
              flush=True)
        stop.wait()
        print("stopping", flush=True)
    return 0


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
    config = _config(args)
    registry = _registry(config)
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


def _cmd_jobs(args: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url

    from neuroread.node.jobs import JobStore

    config = _config(args)
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
                print("every series the node completed was routed (nothing unrouted or incomplete)")
            for row in series:
                print(f"{row['at']:%Y-%m-%d %H:%M:%S}  series {row['series_uid']}  unrouted: {row['reason']}")
            for row in studies:
                print(f"{row['at']:%Y-%m-%d %H:%M:%S}  study {row['study_uid']}  {row['model']} incomplete: "
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

    config = _config(args)
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


def _cmd_results(args: argparse.Namespace) -> int:
    from neuroread.node.tools.results_summary import render, summarize

    folder = Path(args.folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    print(render(summarize(folder), folder))
    return 0


def _cmd_orthanc_config(args: argparse.Namespace) -> int:
    import json

    from neuroread.node.config import load_config
    from neuroread.node.tools.orthanc_config import orthanc_configuration

    folder = Path(args.folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    node_yaml = Path(args.node_config).resolve() if args.node_config else folder / "neuroread.yaml"
    if not args.node_config and not node_yaml.exists():
        node_yaml.write_text("# The node inside Orthanc: models, weights, routes, more destinations (see README).\n"
                             f"storage:\n  root: {folder / 'neuroread'}\n")
    load_config(node_yaml)  # fail now, with the key named, rather than inside Orthanc's log
    users = {}
    if args.user:
        name, sep, password = args.user.partition(":")
        if not sep or not name or not password:
            raise ValueError(f"--user must be NAME:PASSWORD, got {args.user!r}")
        users[name] = password
    config = orthanc_configuration(folder, node_config=node_yaml, http_port=args.http_port,
                                   dicom_port=args.dicom_port, users=users, stable_age=args.stable_age)
    target = folder / "orthanc.json"
    target.write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {target} (node configuration: {node_yaml})\n"
          f"start it:    Orthanc {target}\n"
          f"send to it:  storescu -aec ORTHANC 127.0.0.1 {args.dicom_port} +sd +r +sp '*.dcm' FOLDER\n"
          f"jobs:        curl http://127.0.0.1:{args.http_port}/neuroread/jobs")
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from neuroread.node.tools.replay import replay

    host, sep, port = args.to.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--to must be HOST:PORT, got {args.to!r}")
    report = replay([Path(p) for p in args.paths], host or "127.0.0.1", int(port), called_ae=args.aec,
                    calling_ae=args.aet, progress=not args.quiet)
    print(f"sent {report.sent}, failed {len(report.failed)}, skipped {len(report.skipped)} (not DICOM)")
    for path, why in report.failed[:10]:
        print(f"  failed: {path}: {why}")
    return 0 if not report.failed else 1


# The log level of the read-only inspection commands (models, config check, route explain, jobs,
# results): their output is the answer, not the node's INFO lines.
_QUIET = logging.WARNING


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuroread",
        description="neuroread: an AI node for neuro-imaging beside a PACS. "
        "Run 'neuroread COMMAND --help' for each command.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    from neuroread.training.phantoms.registry import SIZES, task_names  # light: no task module is imported

    p = sub.add_parser(
        "phantoms",
        help="make synthetic DICOM studies with ground truth for a task",
        description="Make synthetic but realistic DICOM studies with ground truth (masks, labels) "
        "for one task or all five. Anatomy comes from the MNI152 template and the "
        "Neuromorphometrics atlas (brain tasks) or a parametric pelvis (axspa-sij).",
        epilog=_EPILOG_PHANTOMS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("task", metavar="TASK", choices=[*task_names(), "all"],
                   help=f"one of: {', '.join(task_names())}, or 'all'")
    p.add_argument("--n", type=int, default=10, help="studies per task (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    p.add_argument("--out", required=True, help="output folder (with 'all': one sub-folder per task)")
    p.add_argument("--size", choices=SIZES, default="small",
                   help="small: fast, for tests (~128 px, few slices); full: clinical matrices (default small)")
    p.add_argument("--balance", metavar="CLASS=W,...",
                   help="class weights, e.g. hemorrhage=0.7,normal=0.3 (default: equal)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--preview", metavar="PNG", help="also render a PNG grid of slices with the truth outlined")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_phantoms)

    p = sub.add_parser(
        "train",
        help="train a model from a dataset (phantoms, a manifest, RSNA or CQ500) into a weights file",
        description="Train the head-CT hemorrhage network (DrCT2) on your data and write a checkpoint "
        "with its model card (network configuration, data description, metrics). MODEL fixes the labels: "
        "ct-hemorrhage has RSNA's six (any, iph, ivh, sdh, edh, sah), ct-hemorrhage-cq500 CQ500's nine "
        "(adds fracture, mass_effect, midline_shift). Deterministic on the CPU: same data and seed, same weights.",
        epilog=_EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="ct-hemorrhage or ct-hemorrhage-cq500")
    p.add_argument("--data", required=True, metavar="PATH", help="the dataset (a folder, or the manifest CSV)")
    p.add_argument("--format", required=True, choices=("phantoms", "manifest", "rsna", "cq500"),
                   help="how --data is laid out (see below)")
    p.add_argument("--labels-csv", metavar="FILE", help="rsna: the ID,Label CSV (required); cq500: reads.csv "
                   "(default DATA/reads.csv)")
    p.add_argument("--folds", type=_count(1), default=5, metavar="K",
                   help="K-fold cross-validation for the metrics (paper: 5 RSNA, 10 CQ500); 1: one held-out "
                   "fifth (default 5)")
    p.add_argument("--epochs", type=_count(1), default=100, metavar="N", help="epochs (default 100, the paper's)")
    p.add_argument("--batch-size", type=_count(1), default=32, metavar="B",
                   help="series per batch (default 32; the paper: 32 CQ500, 256 RSNA)")
    p.add_argument("--seed", type=_count(0), default=0, metavar="S", help="seed of weights, order and splits (default 0)")
    p.add_argument("--preset", choices=("paper", "demo"), default="paper",
                   help="paper: frozen ImageNet VGG16, 224 px zoomed to 512, 16 key slices (needs "
                   "--backbone-weights); demo: a narrow VGG16-BN pre-trained on the per-slice labels, then "
                   "frozen, 128 px zoomed to 256, 8 key slices (default paper)")
    p.add_argument("--backbone-weights", metavar="FILE",
                   help="local torchvision VGG16 state dict (e.g. vgg16-397923af.pth); nothing is downloaded")
    p.add_argument("--pretrain-epochs", type=_count(0), metavar="N",
                   help="first train the VGG encoder N epochs on the per-slice labels (phantoms, RSNA, or a "
                   "manifest's slice_labels): in place of ImageNet weights, or on top of them (default: 3 "
                   "for --preset demo, else 0)")
    p.add_argument("--no-augment", action="store_true",
                   help="do not add the series built from unsampled slices (the paper's data enhancement)")
    p.add_argument("--threads", type=_count(1), metavar="T", help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--out", required=True, metavar="FILE", help="the checkpoint to write (.pt)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "train-demo",
        help="build a model's demo weights from synthetic phantoms on this CPU",
        description="Build the demo weights of MODEL (default ct-hemorrhage) deterministically from "
        "synthetic phantoms and write them where the model looks for them: "
        "$NEUROREAD_WEIGHTS/<model>-demo.pt, default ~/.cache/neuroread/weights/<model>-demo.pt.",
        epilog=_EPILOG_TRAIN_DEMO,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", nargs="?", default="ct-hemorrhage",
                   help="ct-hemorrhage (default) or ct-hemorrhage-cq500")
    p.add_argument("--out", metavar="FILE", help="write the weights here instead of the demo weights path")
    p.add_argument("--cache", metavar="DIR",
                   help="where the phantoms are made and kept (default ~/.cache/neuroread/phantoms)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train_demo)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("-c", "--config", metavar="YAML", help="node configuration (default: built-in defaults)")
        return p

    p = with_config(sub.add_parser(
        "serve", help="run the node: receive, route, infer, deliver",
        description="Run the DICOM node until interrupted (Ctrl-C or SIGTERM): it receives series over "
        "C-STORE (and over STOW-RS when the configuration has a 'dicomweb' section), routes complete series "
        "to models, and delivers the results to the configured destinations.",
        epilog="example:\n  neuroread serve -c neuroread.yaml\n  neuroread replay out/phantoms/ct-hemorrhage "
        "--to 127.0.0.1:11112   # from another terminal", formatter_class=argparse.RawDescriptionHelpFormatter))
    p.set_defaults(func=_cmd_serve)

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

    p = with_config(sub.add_parser("models", help="list the registered models",
                                   description="List the registered models with their inputs and labels."))
    p.set_defaults(func=_cmd_models, log_level=_QUIET)

    p = sub.add_parser("config", help="check a configuration file",
                       description="Validate a YAML configuration and print the effective settings.")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    p = with_config(csub.add_parser("check", help="validate and print the effective configuration",
                                    description="Validate the configuration (keys, values, models, routes, "
                                    "destinations) and print the effective settings, defaults included."))
    p.set_defaults(func=_cmd_config_check, log_level=_QUIET)

    p = sub.add_parser("route", help="routing tools", description="Routing tools.")
    rsub = p.add_subparsers(dest="route_command", metavar="ACTION", required=True)
    p = with_config(rsub.add_parser(
        "explain", help="say which route matches each series under PATH, and why",
        description="Read the series under PATH (a file or folder) and print, for each, its MR sequence class "
        "and which route matched or why none did.",
        epilog="example:\n  neuroread route explain out/phantoms/ms-csvd/ms-csvd-s0-0000",
        formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("path", metavar="PATH")
    p.set_defaults(func=_cmd_route_explain, log_level=_QUIET)

    p = with_config(sub.add_parser(
        "jobs",
        help="list jobs, show one with its audit trail and deliveries, retry a failed one, say why series made none",
        description="The node's jobs, from its job database (queue.database in the configuration). "
        "'show' prints a job's inputs, its audit trail and its deliveries from the outbox: per destination "
        "a summary, then each output object's state, attempts, DIMSE or HTTP status, next try and last error. "
        "'unrouted' lists the series no route took and the studies a multi-series model could not "
        "use (a slot without a series), each with the reason.",
        epilog="examples:\n  neuroread jobs\n  neuroread jobs list --state failed\n  neuroread jobs show 12\n"
        "  neuroread jobs retry 12\n  neuroread jobs unrouted", formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("action", nargs="?", choices=("list", "show", "retry", "unrouted"), default="list")
    p.add_argument("id", nargs="?", type=int, help="job id (show, retry)")
    p.add_argument("--state", choices=("received", "queued", "running", "retrying", "done", "failed"),
                   help="only jobs in this state (list)")
    p.set_defaults(func=_cmd_jobs, log_level=_QUIET)

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
    p.set_defaults(func=_cmd_quarantine, log_level=_QUIET)

    p = sub.add_parser(
        "orthanc-config", help="write an Orthanc configuration that runs neuroread inside Orthanc",
        description="Write FOLDER/orthanc.json: Orthanc with its DICOMweb and Python plugins and neuroread's "
        "plugin (orthanc/neuroread_plugin.py), with this checkout's paths filled in; and, unless --node-config "
        "names one, FOLDER/neuroread.yaml for the node inside it. Orthanc's database and the node's data go "
        "under FOLDER. Series that become stable in Orthanc run through the models; the results are stored "
        "back into Orthanc. Needs Debian's orthanc, orthanc-python and orthanc-dicomweb (bash .ci/setup).",
        epilog="example:\n  neuroread orthanc-config /tmp/nr-orthanc\n  Orthanc /tmp/nr-orthanc/orthanc.json\n"
        "  storescu -aec ORTHANC 127.0.0.1 4242 +sd +r +sp '*.dcm' out/demo/phantoms\n"
        "  curl http://127.0.0.1:8042/neuroread/jobs",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", metavar="FOLDER")
    p.add_argument("--node-config", metavar="YAML", help="the node's configuration (default: FOLDER/neuroread.yaml, "
                   "made if missing)")
    p.add_argument("--http-port", type=_count(1), default=8042, help="Orthanc's HTTP port (default 8042)")
    p.add_argument("--dicom-port", type=_count(1), default=4242, help="Orthanc's DICOM port (default 4242)")
    p.add_argument("--stable-age", type=_count(1), default=30, metavar="S",
                   help="seconds without a new instance before a series is processed (default 30)")
    p.add_argument("--user", metavar="NAME:PASSWORD",
                   help="turn on Orthanc's HTTP authentication with this user (and allow remote access); "
                   "default: no authentication, loopback only")
    p.set_defaults(func=_cmd_orthanc_config)

    p = sub.add_parser(
        "replay", help="send DICOM files to a node, as a PACS would",
        description="Send every DICOM file under PATH... to HOST:PORT with C-STORE (files as stored, "
        "TCP_NODELAY on), with a progress bar and a summary; exits 1 if any file failed.",
        epilog="example:\n  neuroread replay out/phantoms/ct-hemorrhage --to 127.0.0.1:11112",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", metavar="PATH", nargs="+")
    p.add_argument("--to", required=True, metavar="HOST:PORT")
    p.add_argument("--aec", default="NEUROREAD", help="called AE title (default NEUROREAD)")
    p.add_argument("--aet", default="NEUROREAD_SCU", help="our AE title (default NEUROREAD_SCU)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser(
        "results", help="summarise the result objects in a folder (a storescp folder, an outbox)",
        description="Read every DICOM result object under DIR (SR, KOS, SC, PM, SEG) and print, per study, "
        "the models that made them, the findings of each Structured Report (present ones with their "
        "probability) and where the files are. Studies are named by UID, never by patient.",
        epilog="example:\n  neuroread results out/demo/pacs",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", metavar="DIR")
    p.set_defaults(func=_cmd_results, log_level=_QUIET)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Inspection commands print their answer and nothing else: their log is at WARNING (on
    # stderr) unless -v; serve, run, replay and the training commands keep INFO.
    logging.basicConfig(level=logging.DEBUG if args.verbose else getattr(args, "log_level", logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"neuroread {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
