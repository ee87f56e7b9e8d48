"""Tools beside the node: ``neuroread results`` (what came back), ``orthanc-config`` (run
neuroread inside Orthanc), ``replay`` (send studies as a PACS would)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .options import QUIET, count


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


def add_commands(sub) -> None:
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
    p.add_argument("--http-port", type=count(1), default=8042, help="Orthanc's HTTP port (default 8042)")
    p.add_argument("--dicom-port", type=count(1), default=4242, help="Orthanc's DICOM port (default 4242)")
    p.add_argument("--stable-age", type=count(1), default=30, metavar="S",
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
        "probability), a line per table of the text report (e.g. microbleeds per location) and per SEG "
        "(its segments), and where the files are. Studies are named by UID, never by patient.",
        epilog="example:\n  neuroread results out/demo/pacs",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", metavar="DIR")
    p.set_defaults(func=_cmd_results, log_level=QUIET)
