"""Where a finding is: a key slice and an area on it, derived from a result's own maps and masks.

A finding "has a place" when the result shows where it is:

- a **present finding or a decided class** that a heatmap explains: the first of
  :meth:`~neuroread.models.ModelResult.ranked_heatmaps` explaining it (the map the overlays draw),
  on the key slice of that series where the map peaks highest (the slice with the highest peak
  when the map is zero on every key slice there, or the model named none), as the connected area around the peak where the map
  is at least half of it. That is the attention peak of an attention model, the relevance
  cluster of an LRP model, the hottest blob of a lesion map. Absent findings and classes not
  decided get no place: a region labelled with a low probability would point at what the model
  says is not there;
- a **lesion**: its mask on the slice where it is largest, as its outline there;
- a **table row with a mask** (e.g. an atlas region on the patient's series): the same, its
  mask's outline on the slice where it is largest.

:func:`places` lists them; the node draws each as a planar ROI on its image (SR TID 1410) and
names it in the text report, and tests check that both agree with the result. Everything here is
numpy, scipy and contourpy (matplotlib's contour tracer): no DICOM, no torch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .result import Heatmap, ModelResult
from .spec import Code

#: Share of the slice's peak that bounds an area around it.
PEAK_SHARE = 0.5
#: At most this many vertices per outline (viewers draw every one; a blob needs no more).
MAX_VERTICES = 64


@dataclass(frozen=True)
class Place:
    """One finding's place: ``outline`` is a closed polygon (first vertex = last) of (column, row)
    image coordinates on slice ``slice_index`` of its series, in DICOM's convention (0, 0 is the
    top-left corner of the top-left pixel; a pixel's centre is at +0.5). ``source`` says what
    drew it: ``"lesion"`` or the heatmap's kind; ``area_px`` is the area in pixels; ``lesion`` is
    the lesion's index in the result's lesions (``None`` for a finding or class)."""

    target: str
    code: Code
    probability: float | None
    series_instance_uid: str
    slice_index: int
    sop_instance_uid: str
    outline: np.ndarray
    area_px: int
    source: str
    tracking_id: str
    lesion: int | None = None
    table_row: tuple[int, int] | None = None  # (table, row) of a table row with a mask

    @property
    def peak(self) -> tuple[float, float]:
        """The outline's centre (column, row), for labels and tests."""
        pts = self.outline[:-1]
        return float(pts[:, 0].mean()), float(pts[:, 1].mean())


def outline_of(mask: np.ndarray) -> np.ndarray:
    """The closed outline (column, row; pixel centres at +0.5) of the largest connected part of
    a 2D boolean ``mask``: a polygon along its pixels' edges, at most :data:`MAX_VERTICES` long."""
    import contourpy
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n == 0:
        raise ValueError("outline_of: the mask is empty")
    largest = 1 + int(np.argmax(ndimage.sum(mask, labels, range(1, n + 1))))
    part = np.pad((labels == largest).astype(float), 1)  # a border, so the contour closes
    lines = contourpy.contour_generator(z=part, name="serial").lines(0.5)
    line = max(lines, key=len)  # the outer boundary (holes are shorter)
    step = max(1, int(np.ceil((len(line) - 1) / MAX_VERTICES)))
    pts = line[:-1][::step]
    # contourpy's x is the column index, y the row index, both on the padded grid.
    pts = pts - 1.0 + 0.5
    return np.vstack([pts, pts[:1]]).astype(np.float64)


def _heat_place(result: ModelResult, target: str, code: Code, probability: float, heat: Heatmap,
                sop_uids: dict[str, list[str]]) -> Place | None:
    uid = heat.series_instance_uid
    keys = sorted((k for k in result.key_slices if k.series_instance_uid == uid), key=lambda k: k.rank)
    candidates = [k.slice_index for k in keys]
    peaks = [float(heat.array[k].max()) for k in candidates]
    if max(peaks, default=0.0) <= 0 and sop_uids.get(uid):  # the map shows nothing on the key slices
        candidates = list(range(heat.array.shape[0]))
        peaks = [float(heat.array[k].max()) for k in candidates]
    best = int(np.argmax(peaks))  # the first (best-ranked) of a tie
    k, peak = candidates[best], peaks[best]
    if peak <= 0:
        return None
    plane = heat.array[k]
    area = plane >= PEAK_SHARE * peak
    from scipy import ndimage

    labels, _ = ndimage.label(area)
    at = np.unravel_index(int(np.argmax(plane)), plane.shape)
    blob = labels == labels[at]
    uids = sop_uids.get(uid)
    sop = uids[k] if uids else next(s.sop_instance_uid for s in keys if s.slice_index == k)
    return Place(target, code, probability, uid, k, sop, outline_of(blob), int(blob.sum()), heat.kind,
                 f"{target} region")


def places(result: ModelResult, sop_instance_uids: dict[str, list[str]] | None = None) -> list[Place]:
    """Every place of ``result``: present findings, then decided classes (each in the result's
    order), then lesions, then table rows with a mask. ``sop_instance_uids[series]`` lists the series' instances slice by slice
    (needed only when a map peaks on a slice that is not a key slice)."""
    uids = sop_instance_uids or {}
    targets = [(f.label, f.code, f.probability) for f in result.findings if f.present]
    targets += [(c.decided, c.decided_class.code, c.decided_class.probability) for c in result.classifications]
    out: list[Place] = []
    series = list(dict.fromkeys(h.series_instance_uid for h in result.heatmaps))
    for target, code, probability in targets:
        maps = [h for s in series for h in result.ranked_heatmaps(s) if h.explains == target]
        maps.sort(key=lambda h: bool(h.branch))  # whole-network maps first, whatever their series
        if not maps:
            continue
        if (uids.get(maps[0].series_instance_uid) is None
                and not any(k.series_instance_uid == maps[0].series_instance_uid for k in result.key_slices)):
            continue  # no key slice and no instance list: the slice cannot be named
        place = _heat_place(result, target, code, probability, maps[0], uids)
        if place is not None:
            out.append(place)
    for i, les in enumerate(result.lesions):
        areas = les.mask.sum(axis=(1, 2))
        k = int(np.argmax(areas))
        sop = (uids.get(les.series_instance_uid) or [None] * (k + 1))[k]
        if sop is None:
            continue
        out.append(Place(les.label, les.code, les.probability, les.series_instance_uid, k, sop,
                         outline_of(les.mask[k]), int(areas[k]), "lesion", les.name(i), lesion=i))
    for t, table in enumerate(result.tables):
        for r, row in enumerate(table.rows):
            if row.mask is None:
                continue
            areas = row.mask.sum(axis=(1, 2))
            k = int(np.argmax(areas))
            sop = (uids.get(row.series_instance_uid) or [None] * (k + 1))[k]
            if sop is None:
                continue
            out.append(Place(row.code.meaning, row.code, None, row.series_instance_uid, k, sop, outline_of(row.mask[k]),
                             int(areas[k]), "table", f"{table.name} {row.code.meaning}"[:64], table_row=(t, r)))
    return out
