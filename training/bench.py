"""``neuroread bench MODEL``: inference per series (per study for a model of several input slots)
on this machine, for any model with a recipe.

For each preset (e.g. ``paper`` and ``demo``), in a fresh subprocess (so that its peak memory
is its own): the recipe's network with random weights (seeded; the speed does not depend on
the values) saved as a checkpoint and loaded by the registered model, exactly as the node loads
weights, then ``predict`` on a synthetic series per input slot (``--slices`` slices of
``--size``² voxels: head-like values in the slot's modality) through the contract (preprocessing,
network, explanations, the result). One untimed warm-up run, then ``--repeats`` timed ones
(median reported). Printed per preset:

* seconds per series (median) and the process's peak resident memory;
* the floating-point operations of one ``predict``, counted by
  :class:`torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products;
  recurrences and element-wise work are not counted);
* that count over this machine's measured float32 matrix-multiply speed (``torch.matmul`` of two
  4096×4096 matrices, same threads, median of 5 runs, the same statistic as the time per series:
  2048×2048 products gave readings from 300 to 430 GFLOP/s on one machine within a minute, the
  larger ones within 2 %): the time ``predict`` would take at that speed, and the ratio of the
  measured time to it (1.0 = as fast as a large matrix product).

Random weights and an ellipse are not representative of every model: a detector with random
weights finds the most candidates it may on every slice, and an ellipse is not a head. Two
options make the figures those of real use:

* ``--series DIR`` (once per input slot, in the spec's slot order): the input is that DICOM
  series, read as the node reads it (:func:`~neuroread.models.volume.load_series` on the
  folder's files with the slot's ``min_slices``), instead of the synthetic one; ``--slices`` and
  ``--size`` are then ignored and each row reports the series' own shape;
* ``--weights FILE``: a row (preset ``weights``, config the network's configuration name, else
  the file's name) for that checkpoint, loaded as the node loads it (``model.load(FILE, "cpu")``).
  Alone it is the only row; with ``--presets`` the presets' random networks run too.

For example, a detector on a full-size phantom with its demo weights and both random networks::

    neuroread phantoms cmb-svd --n 1 --size full --seed 0 --out phantoms/cmb
    neuroread bench cmb-svd --series phantoms/cmb/cmb-svd-s0-0000/S01 \\
        --weights models/cmb_svd/weights/cmb-svd-demo.pt --presets paper demo

Each row (``--json``) has ``model``, ``preset``, ``config``, ``parameters`` (None for a model
without a ``net``), the input's ``slices``, ``rows``, ``columns`` and ``size`` (the slice's side
when square, else ``"ROWSxCOLUMNS"``), ``series`` (the folders, or None for the synthetic input)
and ``weights`` (the file, or None), besides the figures above.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

WEIGHTS_PRESET = "weights"  # the preset of the row for --weights


def matmul_gflops(n: int = 4096, repeats: int = 5) -> float:
    """This machine's float32 matrix-multiply speed in GFLOP/s (median of ``repeats``)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def synthetic_volume(slot: Any, slices: int, size: int, uid: str):
    """A series for ``slot`` (an :class:`~neuroread.models.InputSlot`): an ellipse of head-like
    values with noise on ``slices`` slices of ``size``², 5 mm apart (2 mm for a 3D acquisition:
    an SWI slot), HU for CT, arbitrary MR intensities otherwise, on an axial grid with 230 mm
    field of view. For a T1 slot of the head (a model that registers a brain to a template, which
    an ellipse is not) the MNI152 template itself on that grid (:func:`template_head`)."""
    from neuroread.models import SeriesVolume

    if slot.modality == "MR" and "T1" in slot.sequences and "HEAD" in slot.body_parts:
        return template_head(slices, size, uid)

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    head = ((yy - size / 2) / (0.41 * size)) ** 2 + ((xx - size / 2) / (0.33 * size)) ** 2 <= 1
    inside, outside, noise = (35.0, -1000.0, 8.0) if slot.modality == "CT" else (400.0, 0.0, 20.0)
    array = np.where(head, inside, outside)[None] + rng.normal(0, noise, (slices, size, size))
    array[:, ~head] = outside
    pixel = 230.0 / size
    thickness = 2.0 if "SWI" in getattr(slot, "sequences", ()) else 5.0
    return SeriesVolume(uid, array.astype(np.float32), (pixel, pixel, thickness), (0.0, 0.0, 0.0), np.eye(3),
                        tuple(f"{uid}.{k + 1}" for k in range(slices)), slot.modality,
                        {"FrameOfReferenceUID": "2.25.7"})


def template_head(slices: int, size: int, uid: str):
    """The MNI152 2009 T1 template (nilearn's package data, brain-extracted) as an axial 3D T1
    series: ``slices`` slices at most 3.5 mm apart (fewer slices cover less of the brain) of
    ``size``² pixels over 230 mm, centred on the brain, linear interpolation, MR-like values."""
    import SimpleITK as sitk

    from neuroread.models import SeriesVolume
    from neuroread.models.atlas import MNI_FILES, package_file

    template = sitk.ReadImage(str(package_file("nilearn", MNI_FILES["t1"])), sitk.sitkFloat32)  # read in LPS
    pixel, spacing = 230.0 / size, min(3.5, 170.0 / slices)
    centre = np.array([0.0, 17.0, 3.0])  # LPS mm: the middle of the template's brain
    origin = centre - np.array([pixel * (size - 1) / 2, pixel * (size - 1) / 2, spacing * (slices - 1) / 2])
    reference = sitk.Image([size, size, slices], sitk.sitkFloat32)
    reference.SetSpacing((pixel, pixel, spacing))
    reference.SetOrigin(origin.tolist())
    array = sitk.GetArrayFromImage(sitk.Resample(template, reference, sitk.Transform(), sitk.sitkLinear, 0.0))
    return SeriesVolume(uid, (array * 4.0).astype(np.float32), (pixel, pixel, spacing), tuple(origin), np.eye(3),
                        tuple(f"{uid}.{k + 1}" for k in range(slices)), "MR", {"FrameOfReferenceUID": "2.25.7"})


def registered(model_name: str):
    """A fresh instance of the registered model ``model_name`` (no weights loaded)."""
    from neuroread.models import default_registry

    registry = default_registry()
    if model_name not in registry.names():
        raise ValueError(f"model {model_name} is not registered")
    return registry.create(model_name)


def check_series(spec: Any, series: Sequence[Path]) -> None:
    """ValueError unless ``series`` has one folder per input slot of ``spec`` (or is empty), each
    holding files."""
    slots = [slot.name for slot in spec.slots]
    if series and len(series) != len(slots):
        raise ValueError(f"{spec.name} has {len(slots)} input slot{'s' if len(slots) != 1 else ''} "
                         f"({', '.join(slots)}): give --series once per slot in that order, not {len(series)} times")
    for folder in series:
        series_files(folder)


def series_files(folder: Path) -> list[Path]:
    """The files of the series folder ``folder`` (its plain files, not hidden ones nor sub-folders'),
    sorted; FileNotFoundError when it is not a folder or holds none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--series {folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"--series {folder}: no files in it")
    return files


def inputs_of(spec: Any, series: Sequence[Path], *, slices: int, size: int) -> dict:
    """One volume per input slot: the series in ``series`` read as the node reads them, or synthetic
    ones of ``slices`` × ``size``² when ``series`` is empty."""
    from neuroread.models.volume import load_series

    if not series:
        return {slot.name: synthetic_volume(slot, slices, size, f"2.25.{i + 1}") for i, slot in enumerate(spec.slots)}
    check_series(spec, series)
    return {slot.name: load_series(series_files(folder), min_slices=slot.min_slices)
            for slot, folder in zip(spec.slots, series)}


def time_predict(model: Any, inputs: dict, repeats: int) -> dict:
    """FLOPs of one ``predict`` of the loaded ``model`` on ``inputs`` (also the warm-up), then
    ``repeats`` timed runs and this machine's matmul speed; the figures as a dict."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model.predict(inputs)  # also the warm-up
    flops = counter.get_total_flops()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict(inputs)
        times.append(time.perf_counter() - start)
    speed = matmul_gflops()
    seconds = statistics.median(times)
    at_speed = flops / (speed * 1e9)
    first = next(iter(inputs.values())).array.shape  # the first slot's (slices, rows, columns)
    return {"slices": first[0], "rows": first[1], "columns": first[2],
            "size": first[1] if first[1] == first[2] else f"{first[1]}x{first[2]}",
            "shapes": {slot: list(volume.array.shape) for slot, volume in inputs.items()},
            "seconds": seconds, "runs": [round(t, 3) for t in times],
            "gflops": flops / 1e9, "matmul_gflops_per_s": speed, "seconds_at_matmul_speed": at_speed,
            "ratio": seconds / at_speed if at_speed else float("nan"),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threads": torch.get_num_threads()}


def run_preset(model_name: str, preset: str, slices: int, size: int, repeats: int,
               series: Sequence[Path] = ()) -> dict:
    """Time ``predict`` of ``model_name`` with ``preset``'s network (random weights) in this process,
    on ``series`` (one folder per slot) or else a synthetic series; the figures as a dict."""
    import torch

    from neuroread.models.checkpoint import save_checkpoint
    from neuroread.training.recipes import recipe as recipe_of

    recipe = recipe_of(model_name)
    # The network only: a frozen backbone's settings want pre-training or ImageNet weights, which timing does not need.
    import dataclasses

    frozen = {"pretrain_epochs": 1} if "pretrain_epochs" in {f.name for f in dataclasses.fields(recipe.settings(preset))} \
        else {}  # a recipe without a pre-training stage has no such setting
    settings = recipe.settings(preset, **frozen)
    torch.manual_seed(0)
    net = recipe.build(settings).eval()
    model = registered(model_name)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "w.pt"
        config = recipe.checkpoint_config(net, settings)
        save_checkpoint(weights, model=model_name, config=config, labels=recipe.outputs(), state_dict=net.state_dict(),
                        architecture=config, training_data="none: random weights for timing", demo=True)
        model.load(weights, "cpu")
    figures = time_predict(model, inputs_of(model.spec, series, slices=slices, size=size), repeats)
    return {"model": model_name, "preset": preset, "config": config.get("name", preset),
            "parameters": sum(p.numel() for p in net.parameters()),
            "series": [str(s) for s in series] or None, "weights": None, **figures}


def run_weights(model_name: str, weights: Path, slices: int, size: int, repeats: int,
                series: Sequence[Path] = ()) -> dict:
    """Time ``predict`` of ``model_name`` with the checkpoint ``weights`` (loaded as the node loads
    it) in this process, on ``series`` or else a synthetic series; the figures as a dict."""
    import torch

    model = registered(model_name)
    model.load(Path(weights), "cpu")
    net = getattr(model, "net", None)
    config = getattr(getattr(net, "config", None), "name", None) or Path(weights).name
    parameters = sum(p.numel() for p in net.parameters()) if isinstance(net, torch.nn.Module) else None
    figures = time_predict(model, inputs_of(model.spec, series, slices=slices, size=size), repeats)
    return {"model": model_name, "preset": WEIGHTS_PRESET, "config": config, "parameters": parameters,
            "series": [str(s) for s in series] or None, "weights": str(weights), **figures}


def bench(model_name: str, presets: list[str], *, slices: int, size: int, repeats: int, threads: int,
          series: Sequence[Path] = (), weights: Path | None = None) -> list[dict]:
    """:func:`run_preset` for each preset, then :func:`run_weights` for ``weights`` when given, each
    in its own subprocess; the rows."""
    common = ["--slices", str(slices), "--size", str(size), "--repeats", str(repeats), "--threads", str(threads)]
    for folder in series:
        common += ["--series", str(folder)]
    runs = [(preset, ["--one", preset]) for preset in presets]
    if weights is not None:
        runs.append((WEIGHTS_PRESET, ["--one-weights", str(weights)]))
    rows = []
    for name, one in runs:
        done = subprocess.run([sys.executable, "-m", "neuroread.training.bench", model_name, *one, *common],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"bench {model_name} {name} failed: {done.stderr[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def report(model_name: str, presets: list[str] | None, *, slices: int, size: int, repeats: int, threads: int,
           json_path: Path | None = None, series: Sequence[Path] = (), weights: Path | None = None) -> list[dict]:
    """Benchmark ``presets`` (default: all of the model's recipe's, or none when ``weights`` is given)
    and ``weights``, on ``series`` (one folder per input slot) or else synthetic series, printing a
    header and a line per row as each finishes (and writing the rows as JSON to ``json_path``); the
    rows. ValueError or FileNotFoundError for inputs that do not fit, before anything runs."""
    from neuroread.training.recipes import recipe as recipe_of

    series = [Path(s) for s in series]
    check_series(registered(model_name).spec, series)
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"--weights {weights}: no such file")
    if presets is None:
        presets = [] if weights is not None else list(recipe_of(model_name).presets)
    source = (f"the series in {', '.join(map(str, series))}" if series
              else f"{slices} slices of {size}x{size}")
    print(f"{model_name} inference per {per(len(registered(model_name).spec.slots))}: {source}, {threads} threads, "
          f"{repeats} timed runs after one warm-up", flush=True)
    rows = []
    for preset in presets:
        rows += bench(model_name, [preset], slices=slices, size=size, repeats=repeats, threads=threads, series=series)
        print(describe(rows[-1]), flush=True)
    if weights is not None:
        rows += bench(model_name, [], slices=slices, size=size, repeats=repeats, threads=threads, series=series,
                      weights=Path(weights))
        print(describe(rows[-1]), flush=True)
    if json_path is not None:
        Path(json_path).write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def per(slots: int) -> str:
    """What one predict takes: a series, or a study for a model of several input slots."""
    return "study" if slots > 1 else "series"


def describe(row: dict) -> str:
    """One readable line for a row: its network, its input when read from a series, the figures."""
    name = row["preset"] if row.get("config") in (None, row["preset"]) else f"{row['preset']} ({row['config']})"
    parameters = "? M" if row.get("parameters") is None else f"{row['parameters'] / 1e6:7.2f} M"
    source = ""
    if row.get("series"):
        shapes = row.get("shapes") or {"": [row["slices"], row["rows"], row["columns"]]}
        source = " on " + ", ".join(f"{slot + ' ' if len(shapes) > 1 else ''}{s} slices of {r}x{c}"
                                    for slot, (s, r, c) in shapes.items())
    return (f"{name:6s} {parameters} parameters{source}: {row['seconds']:7.2f} s per {per(len(row.get('shapes') or {}))} "
            f"(runs {row['runs']}), peak {row['peak_rss_mb']:6.0f} MB, {row['gflops']:8.1f} GFLOP; at this "
            f"machine's matmul speed ({row['matmul_gflops_per_s']:.1f} GFLOP/s) {row['seconds_at_matmul_speed']:6.2f} s "
            f"-> measured/estimate = {row['ratio']:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--presets", nargs="+", default=None,
                        help="network presets with random weights (default: the recipe's all, none with --weights)")
    parser.add_argument("--series", action="append", type=Path, default=[], metavar="DIR",
                        help="a DICOM series folder as the input, once per input slot in slot order "
                        "(default: a synthetic series; --slices and --size are then ignored)")
    parser.add_argument("--weights", type=Path, metavar="FILE", help="also bench this checkpoint (row 'weights')")
    parser.add_argument("--slices", type=int, default=32, help="slices in the synthetic series (default 32)")
    parser.add_argument("--size", type=int, default=512, help="rows and columns of each synthetic slice (default 512)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per preset (default 3)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the per-preset subprocess
    parser.add_argument("--one-weights", type=Path, help=argparse.SUPPRESS)  # the subprocess for --weights
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)  # this process runs one benchmark and nothing else
    if args.one:
        print(json.dumps(run_preset(args.model, args.one, args.slices, args.size, args.repeats, args.series)))
        return 0
    if args.one_weights:
        print(json.dumps(run_weights(args.model, args.one_weights, args.slices, args.size, args.repeats, args.series)))
        return 0
    try:
        report(args.model, args.presets, slices=args.slices, size=args.size, repeats=args.repeats,
               threads=args.threads, json_path=Path(args.json) if args.json else None, series=args.series,
               weights=args.weights)
    except (ValueError, FileNotFoundError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
