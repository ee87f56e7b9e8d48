"""The ``neuroread`` command line.

Each subcommand is a small function taking parsed arguments; :func:`main` takes ``argv`` so
tests can call it in-process. Training-side commands (``phantoms``) import ``training`` only
when they run, so the node's own commands never pay for it.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

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
    from training.phantoms.registry import generate_set, get_task, task_names

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
        from training.phantoms.preview import preview

        png = preview(set_dirs, Path(args.preview))
        print(f"preview: {png}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuroread",
        description="neuroread: an AI node for neuro-imaging beside a PACS. "
        "Run 'neuroread COMMAND --help' for each command.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    from training.phantoms.registry import SIZES, task_names  # light: no task module is imported

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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ValueError as exc:
        print(f"neuroread {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
