"""A picture for people: a PNG grid of slices per study with the truth outlined."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw
from scipy import ndimage

from .baseline import load_truth, read_mask, read_series

_COLOURS = [(255, 60, 60), (60, 200, 255), (255, 210, 0), (120, 255, 120), (255, 120, 255)]


def _window(series_dir: Path) -> tuple[float, float]:
    import pydicom

    first = sorted(series_dir.glob("*.dcm"))[0]
    ds = pydicom.dcmread(first, stop_before_pixels=True)
    return float(ds.WindowCenter), float(ds.WindowWidth)


def _tile(plane: np.ndarray, centre: float, width: float, masks: list[np.ndarray], size: int) -> Image.Image:
    grey = (np.clip((plane - (centre - width / 2)) / width, 0, 1) * 255).astype(np.uint8)
    rgb = np.stack([grey] * 3, axis=-1)
    for i, m in enumerate(masks):
        edge = m & ~ndimage.binary_erosion(m)
        rgb[edge] = _COLOURS[i % len(_COLOURS)]
    tile = Image.fromarray(rgb)
    scale = size / max(tile.size)
    return tile.resize((max(1, int(tile.width * scale)), max(1, int(tile.height * scale))), Image.NEAREST)


def study_row(study_dir: Path, slices: int = 4, size: int = 192) -> Image.Image:
    """One row: for each series, ``slices`` slices (those with most truth first) with outlines."""
    truth = load_truth(study_dir)
    tiles: list[Image.Image] = []
    for key, info in truth["series"].items():
        img = sitk.GetArrayFromImage(read_series(study_dir, key)).astype(np.float32)
        masks = [
            sitk.GetArrayFromImage(read_mask(study_dir, name)) > 0
            for name, m in sorted(truth["masks"].items())
            if m["series"] == key and m.get("contrast")
        ]
        load = sum(m.sum(axis=(1, 2)) for m in masks) if masks else np.zeros(img.shape[0])
        nz = img.shape[0]
        chosen = list(np.argsort(-load, kind="stable")[: max(1, slices // 2)]) if np.any(load) else []
        for k in np.linspace(nz * 0.2, nz * 0.8, slices).astype(int):
            if len(chosen) >= slices:
                break
            if k not in chosen:
                chosen.append(int(k))
        c, w = _window(Path(study_dir) / info["folder"])
        for k in sorted(chosen):
            tiles.append(_tile(img[k], c, w, [m[k] for m in masks], size))
    width = sum(t.width for t in tiles) + 4 * len(tiles)
    row = Image.new("RGB", (width, size + 18))
    draw = ImageDraw.Draw(row)
    labels = ",".join(k for k, v in truth["labels"].items() if v) or "-"
    draw.text((4, 2), f"{truth['case_id']}  class={truth['label']}  labels={labels}", fill=(255, 255, 255))
    x = 0
    for t in tiles:
        row.paste(t, (x, 18))
        x += t.width + 4
    return row


def preview(set_dirs: list[Path], png: Path, studies_per_set: int = 3) -> Path:
    """A PNG grid with a few studies of each phantom set under ``set_dirs``."""
    rows: list[Image.Image] = []
    for set_dir in set_dirs:
        studies = sorted(p.parent for p in Path(set_dir).glob("*/truth.json"))
        # Prefer a mix of classes.
        by_class: dict[str, list[Path]] = {}
        for s in studies:
            by_class.setdefault(json.loads((s / "truth.json").read_text())["label"], []).append(s)
        picked: list[Path] = []
        while len(picked) < min(studies_per_set, len(studies)):
            for group in by_class.values():
                if group and len(picked) < studies_per_set:
                    picked.append(group.pop(0))
        rows.extend(study_row(s) for s in picked)
    if not rows:
        raise ValueError(f"no phantom studies (truth.json) found under {', '.join(map(str, set_dirs))}")
    width = max(r.width for r in rows)
    sheet = Image.new("RGB", (width, sum(r.height + 6 for r in rows)), (20, 20, 20))
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height + 6
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(png)
    return png
