"""``neuroread phantoms``, ``train``, ``train-demo``, ``evaluate`` and ``bench``: the training side.
They import ``neuroread.training`` only when they run (the recipes' names come from entry points),
so the node's commands never pay for it."""
from __future__ import annotations

import argparse
import functools
import os
import re
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

  # then: measure the weights on other data, and run them in the node
  neuroread evaluate ct-hemorrhage --data data/ct-test --weights ct-demo.pt
  #   node.yaml: models: {ct-hemorrhage: {weights: ct-demo.pt}}

Data formats:
  phantoms  a folder written by 'neuroread phantoms' (study and per-slice labels, lesion masks)
  manifest  a CSV: study folder, one 0/1 column per label, optional series_instance_uid,
            slice_labels (CSV per study) and group (patient) columns
  rsna      the RSNA Intracranial Hemorrhage layout: --data is the DICOM folder,
            --labels-csv the ID,Label file (labels per image, aggregated to the series)
  cq500     the CQ500 layout: --data holds the study folders, --labels-csv the reads.csv
            (default DATA/reads.csv); a label is set when most readers marked it

The weights are trained on four fifths of the data and each label's threshold is chosen on the
last fifth (maximum F1; stored in the card, applied by the node unless the configuration
overrides it). --folds K >= 2 reports the mean of K-fold cross-validation (patients kept whole,
thresholds chosen inside each fold); --folds 1 reports the validation fifth (optimistic: the
thresholds were chosen on it); --heldout DIR measures on separate data instead. The card in the
checkpoint holds the network configuration, the data, the settings, the metrics and thresholds.
Each model's own settings (--set KEY=VALUE) and formats: neuroread train --settings-help
"""

_EPILOG_TRAIN_DEMO = """\
examples:
  neuroread train-demo ct-hemorrhage               # to ~/.cache/neuroread/weights/ct-hemorrhage-demo.pt
  NEUROREAD_WEIGHTS=weights neuroread train-demo ct-hemorrhage   # to weights/ct-hemorrhage-demo.pt
  neuroread train-demo ct-hemorrhage --install     # replace the committed demo weights and their card
  neuroread train-demo ct-hemorrhage --compare     # rebuild and compare with the committed card

The committed demo weights come with the checkout, so nothing needs training to run the node.
This command rebuilds them: it makes (and caches) a fixed set of small phantoms, trains the
model's small 'demo' network on this CPU (at most 15 minutes on 2 cores), chooses thresholds on
a validation fifth and measures on fresh held-out phantoms of another seed, then writes the
checkpoint and its card (<file>.card.json). On one machine the same command gives the same
weights; across CPUs the bytes differ and the metrics agree (--compare shows how closely). The
node runs rebuilt weights when NEUROREAD_WEIGHTS names their folder or the configuration names
the file. The weights come from synthetic data and every result made with them says so: not
for clinical use.
"""

_EPILOG_EVALUATE = """\
examples:
  neuroread evaluate ct-hemorrhage --data data/ct-test                 # the committed demo weights
  neuroread evaluate ct-hemorrhage --data rsna/valid --format rsna --labels-csv rsna/valid.csv \\
      --weights ct-hemorrhage-rsna.pt --out metrics.json

Runs the model's predict on every series exactly as the node would (same reader, same
thresholds: configured > card > 0.5) and writes the metrics the model card uses: per-label
precision, recall, F1 and AUC with macro means (multi-label outcomes); accuracy, balanced
accuracy, AUC and weighted F1 (multi-class outcomes); the key-slice tasks from slice scores;
the share of key slices of positive studies that hold a lesion; and, where the data have lesion
masks, the pointing game of the explanation maps (peak within 5 mm of a lesion).
"""

_EPILOG_BENCH = """\
examples:
  neuroread bench ct-hemorrhage                          # paper and demo networks, 32 slices of 512x512
  neuroread bench ct-hemorrhage --presets demo --slices 40 --repeats 5
  neuroread bench cmb-svd --series phantoms/cmb/cmb-svd-s0-0000/S01 \\
      --weights models/cmb_svd/weights/cmb-svd-demo.pt --presets paper demo

Each network runs in its own process with random weights (the time does not depend on them),
loaded and run exactly as the node does. Printed: seconds per series (per study for a model of
several input slots, such as axspa-sij), peak memory, the FLOPs
of one predict and the time they would take at this machine's measured matrix-multiply speed.
The input is a synthetic series (an ellipse of head-like values) unless --series names real
ones, read as the node reads them; a detector with random weights finds the most candidates it
may on every slice, so bench it with --weights FILE too (the row 'weights'), e.g. on a
full-size phantom from `neuroread phantoms cmb-svd --n 1 --size full --seed 0 --out phantoms/cmb`.
"""


def settings_help() -> str:
    """Each recipe's settings with their defaults and meaning (its settings class's docstring) and
    its data formats: what ``neuroread train --settings-help`` prints."""
    import dataclasses
    import inspect

    from neuroread.training.recipes import names, recipe

    out = "Settings (--set KEY=VALUE) and data formats, per model:\n"
    for name in names():
        r = recipe(name)
        kind = r.settings_class
        fields = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(kind) if f.name != "model")
        out += f"\n{name}: presets {', '.join(r.presets)}; formats {', '.join(r.formats)}\n  {fields}\n"
        doc = inspect.getdoc(kind) or ""
        out += "".join(f"    {line}\n" for line in doc.splitlines()[2:])
    return out


class _SettingsHelp(argparse.Action):
    """``--settings-help``: print :func:`settings_help` and exit, like ``--help`` (imports the recipes)."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(settings_help(), end="")
        parser.exit()


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _parse_set(items: list[str], kind) -> dict:
    """``--set KEY=VALUE`` items as typed keyword arguments of the recipe's settings class ``kind``:
    a value is read as YAML (numbers, true/false, null, lists), paths stay strings."""
    import dataclasses
    import difflib

    import yaml

    known = {f.name for f in dataclasses.fields(kind)} - {"model"}
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            raise ValueError(f"--set {key}: not a setting" + (f" (did you mean {close[0]}?)" if close else "")
                             + f"; settings: {', '.join(sorted(known))}")
        value = yaml.safe_load(text) if text.strip() else None
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as text; a number is meant
            try:
                value = float(value) if _FLOAT.fullmatch(value.strip()) else value
            except ValueError:
                pass
        out[key] = value
    return out


def _settings_overrides(args: argparse.Namespace, recipe) -> dict:
    overrides = _parse_set(args.settings, recipe.settings_class)
    for key in ("epochs", "batch_size", "seed", "threads", "device"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    return overrides


def _print_report(report) -> None:
    from neuroread.training.loop import summary

    for i, fold in enumerate(report.folds, start=1):
        print(f"  fold {i}: {summary(fold)}")
    print(f"  metrics: {summary(report.metrics)}")
    if report.thresholds:
        print("  thresholds: " + ", ".join(f"{k} {v:.3f}" for k, v in report.thresholds.items()))
    print(f"wrote {report.path} (sha256 {report.sha256}) in {report.seconds:.0f} s")


def _cmd_train(args: argparse.Namespace) -> int:
    from neuroread.training.loop import train
    from neuroread.training.recipes import recipe as recipe_of

    recipe = recipe_of(args.model)
    if args.preset not in recipe.presets:
        raise ValueError(f"--preset {args.preset}: {args.model}'s presets are {', '.join(recipe.presets)}")
    settings = recipe.settings(args.preset, **_settings_overrides(args, recipe))
    records, source = recipe.read_records(Path(args.data), args.format, labels_csv=args.labels_csv,
                                          progress=not args.quiet)
    heldout, heldout_source = ((), "")
    if args.heldout:
        heldout, heldout_source = recipe.read_records(Path(args.heldout), args.heldout_format or args.format,
                                                      progress=not args.quiet)
    print(f"training {args.model} ({args.preset} network) on {len(records)} series: {source}")
    report = train(recipe, settings, records, Path(args.out), source=source, folds=args.folds, heldout=heldout,
                   heldout_source=heldout_source, command=f"neuroread train {args.model} --preset {args.preset}",
                   progress=not args.quiet)
    _print_report(report)
    return 0


def _cmd_train_demo(args: argparse.Namespace) -> int:
    from neuroread.training.demo import compare_with_card, train_demo

    cache = Path(args.cache) if args.cache else None
    if args.compare:
        print(compare_with_card(args.model, cache_dir=cache, progress=not args.quiet))
        return 0
    report = train_demo(args.model, Path(args.out) if args.out else None, install=args.install,
                        progress=not args.quiet, cache_dir=cache)
    _print_report(report)
    if not args.install and not args.out:
        print(f"to run them: NEUROREAD_WEIGHTS={report.path.parent} neuroread serve ..., or "
              f"models: {{{args.model}: {{weights: {report.path}}}}} in the configuration")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from neuroread.models import default_registry
    from neuroread.models.weights import WeightsCatalog
    from neuroread.training.evaluate import evaluate
    from neuroread.training.loop import summary
    from neuroread.training.recipes import recipe as recipe_of

    registry = default_registry([args.plugin] if args.plugin else [])
    catalog = WeightsCatalog(registry, {args.model: Path(args.weights) if args.weights else None})
    path = catalog.path(args.model)
    model = registry.create(args.model)
    model.load(path, args.device)
    effective = catalog.spec(args.model)  # the thresholds the node applies: the card's
    try:
        reader = recipe_of(args.model).read_records
    except ValueError:  # a model without a training recipe (e.g. a plugin): the generic formats
        reader = functools.partial(_generic_records, effective)
    records, source = reader(Path(args.data), args.format, labels_csv=args.labels_csv, progress=not args.quiet)
    if args.limit:
        records = records[: args.limit]
    metrics = evaluate(model, records, thresholds={lb.name: lb.threshold for lb in effective.labels},
                       progress=not args.quiet)
    print(f"{args.model} with {path} on {len(records)} series ({source}):")
    print(f"  {summary(metrics)}")
    for key in sorted(metrics):
        print(f"  {key:40s} {metrics[key]:.4f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "weights": str(path), "data": source,
                                              "metrics": metrics}, indent=1, sort_keys=True) + "\n")
        print(f"wrote {args.out}")
    return 0


def _generic_records(spec, data: Path, fmt: str, *, labels_csv=None, progress: bool = True):
    """Phantoms or a manifest with ``spec``'s labels and classes: for a model without a recipe."""
    from neuroread.training.datasets import read_manifest, read_phantoms

    names = [lb.name for lb in spec.labels] + [c.name for o in spec.multi_class for c in o.classes]
    if labels_csv:
        raise ValueError("--labels-csv applies to a model's own dataset formats (it has no training recipe)")
    if fmt == "phantoms":
        return read_phantoms(data, names), f"neuroread phantoms under {data}"
    if fmt == "manifest":
        return read_manifest(data, names), f"manifest {data}"
    raise ValueError(f"--format {fmt}: {spec.name} has no training recipe, so only phantoms and manifest are read")


def _cmd_bench(args: argparse.Namespace) -> int:
    from neuroread.training.bench import report

    report(args.model, args.presets, slices=args.slices, size=args.size, repeats=args.repeats, threads=args.threads,
           series=args.series, weights=args.weights)
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

    from neuroread.training.recipes import names as trainable

    models = trainable()
    p = sub.add_parser(
        "train",
        help="train a model from a dataset (phantoms, a manifest, or the model's own formats) into a weights file",
        description="Train MODEL on your data and write a checkpoint with its model card (network configuration, "
        "data description, settings, metrics, per-label thresholds). Trainable: " + ", ".join(models) + ". "
        "Each model's training recipe has its presets ('paper': the paper's network; 'demo': a small one for a "
        "CPU) and its own settings, given with --set KEY=VALUE (see 'Settings' below). Deterministic on the "
        "CPU: same data, settings and seed, same weights.",
        epilog=_EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", choices=models, help=f"one of: {', '.join(models)}")
    p.add_argument("--data", required=True, metavar="PATH", help="the dataset (a folder, or the manifest CSV)")
    p.add_argument("--format", required=True, metavar="FORMAT",
                   help="how --data is laid out: phantoms, manifest, or one of the model's own (see below)")
    p.add_argument("--labels-csv", metavar="FILE", help="the labels file of a dataset format that has one "
                   "(rsna: the ID,Label CSV; cq500: reads.csv, default DATA/reads.csv)")
    p.add_argument("--heldout", metavar="PATH", help="separate data to measure on (same --format unless "
                   "--heldout-format): the card's metrics then come from it")
    p.add_argument("--heldout-format", metavar="FORMAT")
    p.add_argument("--folds", type=count(1), default=5, metavar="K",
                   help="K-fold cross-validation for the metrics (paper: 5 RSNA, 10 CQ500); 1: none (default 5)")
    p.add_argument("--preset", default="paper", metavar="PRESET",
                   help="the recipe's network preset: paper (default) or demo")
    p.add_argument("--epochs", type=count(1), metavar="N", help="epochs of the main stage (default: the preset's)")
    p.add_argument("--batch-size", type=count(1), metavar="B", help="series per batch (default: the preset's)")
    p.add_argument("--seed", type=count(0), metavar="S", help="seed of weights, order and splits (default 0)")
    p.add_argument("--threads", type=count(1), metavar="T", help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--device", metavar="DEVICE", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of the model's recipe, e.g. --set backbone_weights=vgg16-397923af.pth "
                   "(repeatable; --settings-help lists them)")
    p.add_argument("--settings-help", action=_SettingsHelp, help="list each model's settings and data formats, then exit")
    p.add_argument("--out", required=True, metavar="FILE", help="the checkpoint to write (.pt)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "train-demo",
        help="rebuild a model's demo weights from synthetic phantoms on this CPU (or compare them with the card)",
        description="Rebuild the demo weights of MODEL deterministically from synthetic phantoms and write them "
        "with their card: to $NEUROREAD_WEIGHTS/<model>-demo.pt (default ~/.cache/neuroread/weights), to --out, "
        "or over the committed ones (--install).",
        epilog=_EPILOG_TRAIN_DEMO,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", choices=models, help=f"one of: {', '.join(models)}")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", metavar="FILE", help="write the weights here")
    where.add_argument("--install", action="store_true", help="replace the demo weights committed beside the model")
    where.add_argument("--compare", action="store_true",
                       help="rebuild in a temporary folder and compare the held-out metrics with the committed card")
    p.add_argument("--cache", metavar="DIR",
                   help="where the phantoms are made and kept (default ~/.cache/neuroread/phantoms)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train_demo)

    p = sub.add_parser(
        "evaluate",
        help="measure a model's weights on a dataset, as the node runs them, and write the card's metrics",
        description="Run MODEL on every series of --data through its predict, exactly as the node does, and "
        "print (and with --out write) the metrics of its model card.",
        epilog=_EPILOG_EVALUATE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="a registered model (with --plugin, yours too)")
    p.add_argument("--data", required=True, metavar="PATH")
    p.add_argument("--format", default="phantoms", metavar="FORMAT", help="as for train (default phantoms)")
    p.add_argument("--labels-csv", metavar="FILE")
    p.add_argument("--weights", metavar="FILE", help="a weights file (default: the model's demo weights)")
    p.add_argument("--plugin", metavar="REF", help="a model plugin 'package.module:NAME' to register first")
    p.add_argument("--device", default="cpu", metavar="DEVICE")
    p.add_argument("--limit", type=count(1), metavar="N", help="only the first N series")
    p.add_argument("--out", metavar="JSON", help="write the metrics here")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "bench", help="time a model's inference per series (or study) and its peak memory on this machine",
        description="Time MODEL's predict per series (per study for a model of several series) for each network preset, with peak memory and the ratio to "
        "a FLOP estimate at this machine's matrix-multiply speed.",
        epilog=_EPILOG_BENCH, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", choices=models, help=f"one of: {', '.join(models)}")
    p.add_argument("--presets", nargs="+", metavar="PRESET",
                   help="networks with random weights (default: all of the recipe's; none with --weights)")
    p.add_argument("--series", action="append", type=Path, default=[], metavar="DIR",
                   help="a DICOM series folder as the input instead of the synthetic one: once per input slot, "
                   "in slot order; --slices and --size are then ignored")
    p.add_argument("--weights", type=Path, metavar="FILE",
                   help="also bench this weights file, loaded as the node loads it (row 'weights')")
    p.add_argument("--slices", type=count(1), default=32,
                   help="slices in the synthetic series (default 32; ignored with --series)")
    p.add_argument("--size", type=count(16), default=512,
                   help="rows and columns per synthetic slice (default 512; ignored with --series)")
    p.add_argument("--repeats", type=count(1), default=3, help="timed runs per preset (default 3)")
    p.add_argument("--threads", type=count(1), default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    p.set_defaults(func=_cmd_bench)
