"""Pictures for Secondary Capture: windowed slices, heatmap overlays, the report page (PIL).

Pure functions from arrays to RGB ``uint8`` arrays; nothing here knows DICOM modules or any
model. The report page is a title, the demo warning, a verdict line and then **sections**,
each drawn from a typed part of a result, so any model fills the page by what it returns:

- :class:`FindingsSection`: multi-label findings, probability bars against thresholds;
- :class:`ClassificationSection`: a distribution over exclusive classes, the decided one marked;
- :class:`SliceScoresSection`: a score per slice (e.g. slice attention) as a thumbnail strip
  with bars, key slices outlined;
- :class:`KeySlicesSection`: the ranked key slices with their overlays;
- :class:`TableSection`: a coded table (e.g. relevance per region) as a horizontal bar chart;
- :class:`LesionSection`: the lesion list (type, location, volume, probability).

Sections are drawn in order while they fit; those that do not are named at the bottom (their
values are all in the SR). The default PIL font is used (``ImageFont.load_default(size=…)``),
so no font file is needed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.pixels import apply_modality_lut

BACKGROUND = (16, 16, 16)
TEXT = (235, 235, 235)
WARN = (255, 80, 60)
PRESENT = (255, 170, 40)
ABSENT = (120, 200, 120)
BAR = (90, 160, 255)
NEGATIVE = (70, 120, 255)
CT_BRAIN_WINDOW = (40.0, 80.0)
MARGIN = 24


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def windowed(ds: pydicom.Dataset) -> np.ndarray:
    """The slice in modality units, windowed to ``uint8`` (its own window, else a default)."""
    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    center = ds.get("WindowCenter")
    width = ds.get("WindowWidth")
    if center is not None and width is not None:
        center = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
        width = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
    elif ds.get("Modality") == "CT":
        center, width = CT_BRAIN_WINDOW
    else:
        low, high = np.percentile(values, [1, 99])
        center, width = (low + high) / 2, max(high - low, 1.0)
    width = max(width, 1.0)
    out = (values - (center - width / 2)) / width
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


def heat_colors(gray: np.ndarray, heat: np.ndarray | None, threshold: float = 0.2, *, signed: bool = False) -> np.ndarray:
    """``gray`` (uint8) as RGB with ``heat`` blended in (same shape).

    Unsigned: ``heat`` in [0, 1] as a hot colour map (values below ``threshold`` not drawn).
    Signed: ``heat`` in [-1, 1], positive evidence hot, negative evidence in blue.
    """
    rgb = np.repeat(gray[..., None].astype(np.float32), 3, axis=-1)
    if heat is not None:
        h = np.clip(heat.astype(np.float32), -1 if signed else 0, 1)
        v = np.abs(h)
        hot = np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], -1) * 255
        cold = np.stack([np.clip(3 * v - 2, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v, 0, 1)], -1) * 255
        color = np.where((h < 0)[..., None], cold, hot) if signed else hot
        alpha = np.where(v >= threshold, 0.55 * v, 0.0)[..., None]
        rgb = rgb * (1 - alpha) + color * alpha
    return np.clip(rgb, 0, 255).astype(np.uint8)


def upscale(rgb: np.ndarray, min_size: int = 256) -> np.ndarray:
    """Enlarge by an integer factor (nearest) until the smaller side is at least ``min_size``."""
    factor = max(1, -(-min_size // min(rgb.shape[:2])))
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1) if factor > 1 else rgb


def _wrap(text: str, font, width: int) -> list[str]:
    """``text`` split at spaces into lines no wider than ``width`` pixels (where possible)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def captioned(rgb: np.ndarray, lines: list[str], demo_text: str | None) -> np.ndarray:
    """``rgb`` with a caption strip below it (and the demo warning in red when given)."""
    size = max(11, rgb.shape[1] // 32)
    font = _font(size)
    warn = _wrap(demo_text, font, rgb.shape[1] - 12) if demo_text else []
    rows = len(lines) + len(warn)
    strip = rows * (size + 4) + 8
    img = Image.new("RGB", (rgb.shape[1], rgb.shape[0] + strip), BACKGROUND)
    img.paste(Image.fromarray(rgb), (0, 0))
    draw = ImageDraw.Draw(img)
    y = rgb.shape[0] + 4
    for line in lines:
        draw.text((6, y), line, fill=TEXT, font=font)
        y += size + 4
    for line in warn:
        draw.text((6, y), line, fill=WARN, font=font)
        y += size + 4
    return np.asarray(img, dtype=np.uint8)


# -- sections -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Canvas:
    """The page being drawn: the image, its drawing context and its size."""

    image: Image.Image
    draw: ImageDraw.ImageDraw

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height


class Section(Protocol):
    """A part of the report page: ``title`` (named when it does not fit), its ``height`` on a
    page of a width, and ``render`` from a top ``y``."""

    title: str

    def height(self, width: int) -> int: ...

    def render(self, canvas: Canvas, y: int) -> None: ...


def _heading(canvas: Canvas, y: int, text: str) -> int:
    canvas.draw.text((MARGIN, y), text, fill=TEXT, font=_font(18))
    return y + 28


def _bar(canvas: Canvas, x: int, y: int, fraction: float, color: tuple[int, int, int], length: int = 240,
         marker: float | None = None) -> None:
    canvas.draw.rectangle((x, y + 2, x + length, y + 14), outline=TEXT)
    canvas.draw.rectangle((x, y + 2, x + int(length * min(max(fraction, 0.0), 1.0)), y + 14), fill=color)
    if marker is not None:
        mx = x + int(length * marker)
        canvas.draw.line((mx, y, mx, y + 16), fill=TEXT, width=2)


def _bar_rows(canvas: Canvas, y: int, rows: list[tuple[str, float, tuple[int, int, int], float | None]]) -> None:
    """One line per (text, probability, colour, marker): the text, and a bar with the marker (a threshold)."""
    small = _font(14)
    for text, probability, color, marker in rows:
        canvas.draw.text((MARGIN + 8, y), text, fill=color, font=small)
        _bar(canvas, canvas.width - 276, y, probability, color, marker=marker)
        y += 22


@dataclass(frozen=True)
class FindingLine:
    """One finding as the report page prints it."""

    label: str
    meaning: str
    probability: float
    threshold: float
    present: bool


@dataclass(frozen=True)
class FindingsSection:
    findings: tuple[FindingLine, ...]
    title: str = "Findings (probability / threshold)"

    def height(self, width: int) -> int:
        return 28 + 22 * len(self.findings) + 10

    def render(self, canvas: Canvas, y: int) -> None:
        _bar_rows(canvas, _heading(canvas, y, self.title), [
            (f"{f.label}: {f.probability:.3f} / {f.threshold:.2f}  {'present' if f.present else 'absent'}  "
             f"({f.meaning})", f.probability, PRESENT if f.present else ABSENT, f.threshold) for f in self.findings])


@dataclass(frozen=True)
class ClassLine:
    meaning: str
    probability: float
    decided: bool


@dataclass(frozen=True)
class ClassificationSection:
    """A multi-class outcome: one bar per class, the decided class highlighted."""

    concept: str
    classes: tuple[ClassLine, ...]

    @property
    def title(self) -> str:
        return f"{self.concept} (one class decided)"

    def height(self, width: int) -> int:
        return 28 + 22 * len(self.classes) + 10

    def render(self, canvas: Canvas, y: int) -> None:
        _bar_rows(canvas, _heading(canvas, y, self.title), [
            (f"{c.meaning}: {c.probability:.3f}{'  <- decided' if c.decided else ''}", c.probability,
             PRESENT if c.decided else ABSENT, None) for c in self.classes])


@dataclass(frozen=True)
class SampledSlice:
    """A slice with its score, for :class:`SliceScoresSection`."""

    image: np.ndarray  # windowed uint8
    slice_index: int
    score: float
    key: bool


@dataclass(frozen=True)
class SliceScoresSection:
    """A score per slice as thumbnails over bars in proportion (key slices outlined)."""

    concept: str
    slices: tuple[SampledSlice, ...]
    chart_h: int = 56

    @property
    def title(self) -> str:
        return f"{self.concept} by slice (key slices outlined)"

    def _side(self, width: int) -> int:
        return max(12, min(56, (width - 2 * MARGIN) // len(self.slices) - 2))

    def height(self, width: int) -> int:
        return 28 + self._side(width) + 4 + self.chart_h + 2 + 20

    def render(self, canvas: Canvas, y: int) -> None:
        y = _heading(canvas, y, self.title)
        side = self._side(canvas.width)
        top = max(s.score for s in self.slices) or 1.0
        for i, s in enumerate(self.slices):
            x = MARGIN + i * (side + 2)
            canvas.image.paste(Image.fromarray(s.image).convert("RGB").resize((side, side), Image.Resampling.BILINEAR),
                               (x, y))
            if s.key:
                canvas.draw.rectangle((x - 1, y - 1, x + side, y + side), outline=PRESENT, width=2)
            h = int(self.chart_h * max(s.score, 0.0) / top)
            base = y + side + 4 + self.chart_h
            canvas.draw.rectangle((x, base - h, x + side - 1, base), fill=PRESENT if s.key else BAR)
        y += side + 4 + self.chart_h + 2
        canvas.draw.text((MARGIN, y), f"slices {self.slices[0].slice_index}..{self.slices[-1].slice_index} of the "
                                      f"series, highest {top:.3f}", fill=TEXT, font=_font(12))


@dataclass(frozen=True)
class Thumb:
    """A key slice for the report page: its overlay, rank, score, slice index."""

    image: np.ndarray
    rank: int
    score: float
    slice_index: int


@dataclass(frozen=True)
class KeySlicesSection:
    thumbs: tuple[Thumb, ...]
    title: str = "Key slices by rank, with the explanation map"
    max_side: int = 200

    def _side(self, width: int) -> int:
        return max(64, min(self.max_side, (width - 2 * MARGIN) // len(self.thumbs) - 16))

    def height(self, width: int) -> int:
        return 28 + self._side(width) + 22

    def render(self, canvas: Canvas, y: int) -> None:
        y = _heading(canvas, y, self.title)
        side = self._side(canvas.width)
        small = _font(14)
        for i, t in enumerate(sorted(self.thumbs, key=lambda t: t.rank)[: (canvas.width - MARGIN) // (side + 16)]):
            x = MARGIN + i * (side + 16)
            canvas.image.paste(Image.fromarray(t.image).resize((side, side), Image.Resampling.BILINEAR), (x, y))
            canvas.draw.text((x, y + side + 2), f"#{t.rank} slice {t.slice_index} score {t.score:.3f}", fill=TEXT,
                             font=small)


@dataclass(frozen=True)
class TableSection:
    """One column of a coded table as horizontal bars, rows sorted by |value| (top ``rows``)."""

    table: str
    column: str
    unit: str
    rows: tuple[tuple[str, float], ...]
    shown: int = 8

    @property
    def title(self) -> str:
        annotation = self.unit.startswith("{") and self.unit.endswith("}")  # UCUM's {count}: a name, not a unit
        unit = "" if self.unit in ("1", "no units") or annotation else f" ({self.unit})"
        return f"{self.table}: {self.column}{unit}"

    @staticmethod
    def row_name(name: str, width: int = 40) -> str:
        """A row's name in ``width`` characters: a trailing explanation in brackets goes first."""
        if len(name) > width and " (" in name:
            name = name.split(" (", 1)[0]
        return name[:width]

    def _top(self) -> list[tuple[str, float]]:
        return sorted(self.rows, key=lambda r: -abs(r[1]))[: self.shown]

    def height(self, width: int) -> int:
        return 28 + 20 * len(self._top()) + 10

    def render(self, canvas: Canvas, y: int) -> None:
        y = _heading(canvas, y, self.title)
        top = self._top()
        reach = max((abs(v) for _, v in top), default=1.0) or 1.0
        small = _font(14)
        for name, value in top:
            canvas.draw.text((MARGIN + 8, y), self.row_name(name), fill=TEXT, font=small)
            canvas.draw.text((MARGIN + 360, y), f"{value:.4g}", fill=TEXT, font=small)
            _bar(canvas, MARGIN + 460, y, abs(value) / reach, PRESENT if value >= 0 else NEGATIVE, length=300)
            y += 20


@dataclass(frozen=True)
class LesionLine:
    label: str
    location: str
    volume_mm3: float
    probability: float | None


@dataclass(frozen=True)
class LesionSection:
    lesions: tuple[LesionLine, ...]
    shown: int = 8

    @property
    def title(self) -> str:
        if len(self.lesions) > self.shown:
            return f"Lesions: {len(self.lesions)} (the {self.shown} largest here, all in the SR)"
        return f"Lesions: {len(self.lesions)}"

    def height(self, width: int) -> int:
        return 28 + 20 * min(len(self.lesions), self.shown) + 10

    def fit(self, room: int) -> LesionSection | None:
        """This section with as many of its largest lesions as ``room`` pixels hold (at least two), or None."""
        rows = (room - 38) // 20
        return dataclasses.replace(self, shown=rows) if rows >= min(2, len(self.lesions)) and rows >= 1 else None

    def render(self, canvas: Canvas, y: int) -> None:
        y = _heading(canvas, y, self.title)
        small = _font(14)
        for i, les in enumerate(sorted(self.lesions, key=lambda x: -x.volume_mm3)[: self.shown], start=1):
            p = "" if les.probability is None else f", p {les.probability:.2f}"
            where = f" in {les.location}" if les.location else ""
            canvas.draw.text((MARGIN + 8, y), f"{i}. {les.label}{where}: {les.volume_mm3:.0f} mm3{p}", fill=TEXT,
                             font=small)
            y += 20


def verdict(findings: list[FindingLine], decided: list[str]) -> str:
    """The page's headline: the present findings and decided classes, or that none reached its threshold."""
    named = [f.meaning or f.label for f in findings if f.present] + list(decided)
    return f"This patient may have: {', '.join(named)}" if named else "No finding reaches its threshold"


def report_page(title: str, subtitle: str, sections: list[Section], demo_text: str | None, *,
                headline: str, headline_positive: bool, width: int = 1024, height: int = 768) -> np.ndarray:
    """The one-page report: title, subtitle, demo warning, ``headline`` and then each section
    while it fits (DrCT2's Figure 2 is its first user: findings, slice attention, key slices);
    a section that can shorten itself (``fit``: the lesion list) shows what the rest of the page
    holds; sections left out are named at the bottom."""
    img = Image.new("RGB", (width, height), BACKGROUND)
    canvas = Canvas(img, ImageDraw.Draw(img))
    canvas.draw.text((MARGIN, 16), title, fill=TEXT, font=_font(28))
    canvas.draw.text((MARGIN, 54), subtitle, fill=TEXT, font=_font(14))
    y = 84
    if demo_text:
        canvas.draw.rectangle((16, y, width - 16, y + 34), outline=WARN, width=2)
        canvas.draw.text((28, y + 6), demo_text, fill=WARN, font=_font(18))
        y += 46
    font = _font(18)
    for line in _wrap(headline, font, width - 2 * MARGIN):  # a long verdict on as many lines as it needs
        canvas.draw.text((MARGIN, y), line, fill=PRESENT if headline_positive else ABSENT, font=font)
        y += 24
    y += 6
    left_out = []
    for section in sections:
        need = section.height(width)
        if y + need > height - 24 and hasattr(section, "fit"):  # a list can show its first rows
            section = section.fit(height - 24 - y) or section
            need = section.height(width)
        if y + need > height - 24:
            left_out.append(section.title)
            continue
        section.render(canvas, y)
        y += need
    if left_out:
        canvas.draw.text((MARGIN, height - 22), f"not shown here (see the SR): {'; '.join(left_out)}"[:160],
                         fill=TEXT, font=_font(12))
    return np.asarray(img, dtype=np.uint8)
