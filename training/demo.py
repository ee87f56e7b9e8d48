"""Demo weights: a short, deterministic training on synthetic phantoms, on this CPU.

``neuroread train-demo MODEL`` runs :func:`train_demo` with the model's recipe and its
:class:`DemoPlan`: it makes (or reuses from its cache) a fixed set of small phantoms of the
model's task (fixed seed, classes one to one), trains the recipe's ``demo`` network on them
(thresholds chosen on a validation fifth), scores it on a second, **held-out** set of fresh
phantoms of another seed (never seen in training or in the threshold choice), and writes the
checkpoint with that card (``demo`` set) where it is asked to: by default
``~/.cache/neuroread/weights/<model>-demo.pt`` (``$NEUROREAD_WEIGHTS`` moves it; the node runs
them in place of the committed file when ``NEUROREAD_WEIGHTS`` names their folder or the
configuration names the file); ``install=True`` (CLI ``--install``) replaces the
weights committed beside the model instead, and writes their card (``<file>.card.json``: the
command, the commit, the plan, the held-out metrics, the thresholds) for the maintainers to
commit. The plan is sized for at most 15 minutes on a 2-core CPU.

:func:`compare_with_card` (``neuroread train-demo MODEL --compare``; ``python -m
neuroread.training.demo --compare MODEL``) rebuilds the weights in a temporary place and prints
their held-out metrics beside the committed card's: float results differ across CPUs, so
the bytes differ from machine to machine and the metrics should agree.

These weights come from synthetic data: the card says so, and every output the node makes
with them says so too. They are not for clinical use.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path("~/.cache/neuroread/phantoms")
HEADLINE = ("f1_macro", "auc_macro", "key_slice.difficult", "key_slice.top5_lesion_fraction", "pointing.hit_rate")


@dataclass(frozen=True)
class DemoPlan:
    """What a demo training does: ``studies`` phantoms of ``task`` (size ``size``, seed
    ``phantom_seed``, classes one to one) to train on, ``heldout_studies`` fresh ones (seed
    ``heldout_seed``) to measure on, and the recipe's ``demo`` settings with ``settings``
    overridden (epochs, seed, threads: fixed, since the thread count may change the last bits
    of CPU sums, hence of the weights). ``proxy_studies`` > 0 makes a third set (seed
    ``proxy_seed``) for a recipe that pre-trains on other studies: its folder is handed to the
    recipe's settings as ``pretrain_data``, which such a recipe must accept."""

    task: str
    studies: int = 256
    phantom_seed: int = 20220601
    size: str = "small"
    heldout_studies: int = 128
    heldout_seed: int = 20221107
    settings: Mapping[str, Any] = field(default_factory=dict)
    proxy_studies: int = 0
    proxy_seed: int = 20220315

    def __post_init__(self) -> None:
        for key in ("studies", "heldout_studies"):
            value = getattr(self, key)
            # a validation fifth needs five studies at the very least, one of each class per part
            if isinstance(value, bool) or not isinstance(value, int) or value < 10:
                raise ValueError(f"DemoPlan.{key} must be an integer >= 10, got {value!r}")
        if self.heldout_seed == self.phantom_seed:
            raise ValueError("DemoPlan.heldout_seed must differ from phantom_seed: held-out phantoms are fresh ones")
        if isinstance(self.proxy_studies, bool) or not isinstance(self.proxy_studies, int) or self.proxy_studies < 0:
            raise ValueError(f"DemoPlan.proxy_studies must be an integer >= 0, got {self.proxy_studies!r}")
        if self.proxy_studies and self.proxy_seed in (self.phantom_seed, self.heldout_seed):
            raise ValueError("DemoPlan.proxy_seed must differ from the training and held-out seeds: proxy phantoms "
                             "are other studies")

    def describe(self) -> str:
        proxy = (f"; --n {self.proxy_studies} --seed {self.proxy_seed} (the backbone's proxy task)"
                 if self.proxy_studies else "")
        return (f"neuroread phantoms {self.task} --n {self.studies} --seed {self.phantom_seed} --size {self.size} "
                f"(training and validation); --n {self.heldout_studies} --seed {self.heldout_seed} (held out){proxy}")


def phantom_set(task: str, studies: int, seed: int, size: str = "small", cache_dir: Path | None = None, *,
                progress: bool = True) -> Path:
    """The folder of these phantoms under ``cache_dir`` (default ``~/.cache/neuroread/phantoms``),
    made when absent. A set is complete once its ``manifest.csv`` exists (written last); it is
    made in a temporary folder and renamed, so an interrupted run never leaves a set that looks
    complete."""
    from neuroread.training.phantoms.registry import generate_set

    root = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE).expanduser()
    folder = root / f"{task}-{size}-s{seed}-n{studies}"
    if (folder / "manifest.csv").is_file():
        log.info("reusing %d phantoms in %s", studies, folder)
        return folder
    root.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=root))
    try:
        generate_set(task, studies, seed, partial, size=size, progress=progress)
        if folder.exists():  # an older, incomplete attempt
            shutil.rmtree(folder)
        partial.rename(folder)
    finally:
        if partial.exists():
            shutil.rmtree(partial)
    return folder


def _commit() -> str:
    """The checkout's commit (``+dirty`` with uncommitted changes), or ``unknown`` outside git."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def card_path(weights: Path) -> Path:
    """Where a weights file's human-readable card lives: ``<file>.card.json``."""
    return Path(weights).with_name(Path(weights).name + ".card.json")


def train_demo(model_name: str, out_path: Path | None = None, *, install: bool = False, progress: bool = True,
               cache_dir: Path | None = None, plan: DemoPlan | None = None):
    """Build the demo weights of ``model_name`` (see the module docstring) and return the
    :class:`~neuroread.training.loop.TrainReport`."""
    from neuroread.models import default_registry
    from neuroread.models.weights import built_demo_path
    from neuroread.training.loop import train
    from neuroread.training.recipes import recipe as recipe_of

    recipe = recipe_of(model_name)
    plan = plan or recipe.demo_plan
    if plan is None:
        raise ValueError(f"model {model_name} has no demo plan")
    settings = recipe.settings("demo", **dict(plan.settings))  # bad settings raise here, before any work
    if out_path is not None:
        out = Path(out_path)
    elif install:
        entry = default_registry().entry(model_name) if model_name in default_registry().names() else None
        if entry is None or entry.demo_weights is None:
            raise ValueError(f"model {model_name} has no committed demo weights location to install into")
        out = Path(entry.demo_weights)
    else:
        out = built_demo_path(model_name)
    folder = phantom_set(plan.task, plan.studies, plan.phantom_seed, plan.size, cache_dir, progress=progress)
    heldout_folder = phantom_set(plan.task, plan.heldout_studies, plan.heldout_seed, plan.size, cache_dir,
                                 progress=progress)
    if plan.proxy_studies:  # phantoms of another seed for the backbone's proxy task (the recipe's pretrain_data)
        proxy = phantom_set(plan.task, plan.proxy_studies, plan.proxy_seed, plan.size, cache_dir, progress=progress)
        settings = recipe.settings("demo", **{**dict(plan.settings), "pretrain_data": proxy})
    records, _ = recipe.read_records(folder, "phantoms")
    heldout, _ = recipe.read_records(heldout_folder, "phantoms")
    source = f"synthetic phantoms, not for clinical use ({plan.describe()})"
    command = f"neuroread train-demo {model_name}" + (" --install" if install else "")
    report = train(recipe, settings, records, out, source=source, folds=1, demo=True, heldout=heldout,
                   heldout_source=f"fresh phantoms, seed {plan.heldout_seed}", command=command, progress=progress)
    card = {"model": model_name, "weights": out.name, "sha256": report.sha256, "command": command,
            "commit": _commit(), "plan": {**asdict(plan), "settings": dict(plan.settings)},
            "settings": settings.describe(), "seconds": round(report.seconds, 1),
            "heldout_metrics": report.metrics, "thresholds": report.thresholds, "training_data": report.training_data,
            "synthetic": "trained on synthetic phantoms: not for clinical use"}
    card_path(out).write_text(json.dumps(card, indent=1, sort_keys=True) + "\n")
    return report


def compare_with_card(model_name: str, *, cache_dir: Path | None = None, progress: bool = True) -> str:
    """Rebuild ``model_name``'s demo weights in a temporary folder and set their held-out metrics
    beside the committed card's (see the module docstring); returns the table as text."""
    from neuroread.models import default_registry

    entry = default_registry().entry(model_name)
    if entry.demo_weights is None or not card_path(entry.demo_weights).is_file():
        raise ValueError(f"model {model_name} has no committed demo weights card to compare with")
    committed = json.loads(card_path(entry.demo_weights).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        report = train_demo(model_name, Path(tmp) / f"{model_name}-demo.pt", cache_dir=cache_dir, progress=progress)
    lines = [f"{'metric':40s} {'committed':>10s} {'rebuilt':>10s} {'difference':>11s}"]
    keys = [k for k in committed["heldout_metrics"] if k in report.metrics and not k.startswith(("support.", "n_"))]
    for key in sorted(keys, key=lambda k: (k not in HEADLINE, k)):
        a, b = committed["heldout_metrics"][key], report.metrics[key]
        lines.append(f"{key:40s} {a:10.3f} {b:10.3f} {b - a:+11.3f}")
    lines.append(f"sha256 committed {committed['sha256'][:16]}…, rebuilt {report.sha256[:16]}… "
                 f"({'identical' if committed['sha256'] == report.sha256 else 'different bytes: another CPU or commit'}); "
                 f"rebuilt in {report.seconds:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rebuild a model's demo weights and compare their held-out "
                                                 "metrics with the committed card.")
    parser.add_argument("--compare", metavar="MODEL", required=True)
    parser.add_argument("--cache", metavar="DIR", help="phantom cache (default ~/.cache/neuroread/phantoms)")
    args = parser.parse_args(argv)
    print(compare_with_card(args.compare, cache_dir=Path(args.cache) if args.cache else None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
