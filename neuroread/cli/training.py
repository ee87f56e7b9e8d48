"""``neuroread phantoms``, ``train`` and ``train-demo``: the training side. They import
``neuroread.training`` only when they run, so the node's commands never pay for it."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from .options import count

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



def add_commands(sub) -> None:
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
    p.add_argument("--folds", type=count(1), default=5, metavar="K",
                   help="K-fold cross-validation for the metrics (paper: 5 RSNA, 10 CQ500); 1: one held-out "
                   "fifth (default 5)")
    p.add_argument("--epochs", type=count(1), default=100, metavar="N", help="epochs (default 100, the paper's)")
    p.add_argument("--batch-size", type=count(1), default=32, metavar="B",
                   help="series per batch (default 32; the paper: 32 CQ500, 256 RSNA)")
    p.add_argument("--seed", type=count(0), default=0, metavar="S", help="seed of weights, order and splits (default 0)")
    p.add_argument("--preset", choices=("paper", "demo"), default="paper",
                   help="paper: frozen ImageNet VGG16, 224 px zoomed to 512, 16 key slices (needs "
                   "--backbone-weights); demo: a narrow VGG16-BN pre-trained on the per-slice labels, then "
                   "frozen, 128 px zoomed to 256, 8 key slices (default paper)")
    p.add_argument("--backbone-weights", metavar="FILE",
                   help="local torchvision VGG16 state dict (e.g. vgg16-397923af.pth); nothing is downloaded")
    p.add_argument("--pretrain-epochs", type=count(0), metavar="N",
                   help="first train the VGG encoder N epochs on the per-slice labels (phantoms, RSNA, or a "
                   "manifest's slice_labels): in place of ImageNet weights, or on top of them (default: 3 "
                   "for --preset demo, else 0)")
    p.add_argument("--no-augment", action="store_true",
                   help="do not add the series built from unsampled slices (the paper's data enhancement)")
    p.add_argument("--threads", type=count(1), metavar="T", help="CPU threads for torch (default: torch's choice)")
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
