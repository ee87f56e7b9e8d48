"""Pictures for Secondary Capture: windowed slices, heatmap overlays, the report page (PIL).

Pure functions from arrays to RGB ``uint8`` arrays; nothing here knows DICOM modules.
The default PIL font is used (``ImageFont.load_default(size=…)``), so no font file is needed.
"""
from __future__ import annotations

from dataclasses import dataclass

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
CT_BRAIN_WINDOW = (40.0, 80.0)


@dataclass(frozen=True)
class FindingLine:
    """One finding as the report page prints it."""

    label: str
    meaning: str
    probability: float
    threshold: float
    present: bool


@dataclass(frozen=True)
class SampledSlice:
    """A slice the model looked at, for the report page's attention strip."""

    image: np.ndarray  # windowed uint8
    slice_index: int
    score: float
    key: bool


@dataclass(frozen=True)
class Thumb:
    """A key slice for the report page: its windowed overlay, rank, score, slice index."""

    image: np.ndarray
    rank: int
    score: float
    slice_index: int


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


def heat_colors(gray: np.ndarray, heat: np.ndarray | None, threshold: float = 0.2) -> np.ndarray:
    """``gray`` (uint8) as RGB with ``heat`` (in [0, 1], same shape) blended as a hot colour map."""
    rgb = np.repeat(gray[..., None].astype(np.float32), 3, axis=-1)
    if heat is not None:
        v = np.clip(heat.astype(np.float32), 0, 1)
        color = np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], -1) * 255
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


def _verdict(findings: list[FindingLine]) -> str:
    present = [f.meaning or f.label for f in findings if f.present]
    return f"This patient may have: {', '.join(present)}" if present else \
        "No finding reaches its threshold"


def _attention_strip(img: Image.Image, draw: ImageDraw.ImageDraw, y: int, sampled: list[SampledSlice]) -> int:
    """Every sampled slice as a small thumbnail (key slices outlined) over its attention bar;
    returns the next free y."""
    width = img.width
    small = _font(12)
    draw.text((24, y), "Sampled slices and their attention (key slices outlined)", fill=TEXT, font=_font(18))
    y += 28
    side = max(12, min(56, (width - 48) // len(sampled) - 2))
    top = max(s.score for s in sampled) or 1.0
    chart_h = 56
    for i, s in enumerate(sampled):
        x = 24 + i * (side + 2)
        img.paste(Image.fromarray(s.image).convert("RGB").resize((side, side), Image.Resampling.BILINEAR), (x, y))
        if s.key:
            draw.rectangle((x - 1, y - 1, x + side, y + side), outline=PRESENT, width=2)
        h = int(chart_h * max(s.score, 0.0) / top)
        draw.rectangle((x, y + side + 4 + chart_h - h, x + side - 1, y + side + 4 + chart_h),
                       fill=PRESENT if s.key else BAR)
    y += side + 4 + chart_h + 2
    draw.text((24, y), f"slices {sampled[0].slice_index}..{sampled[-1].slice_index} of the series, "
                       f"highest attention {top:.3f}", fill=TEXT, font=small)
    return y + 20


def report_page(title: str, subtitle: str, findings: list[FindingLine], thumbs: list[Thumb],
                demo_text: str | None, width: int = 1024, height: int = 768,
                sampled: list[SampledSlice] | None = None) -> np.ndarray:
    """The one-page report, laid out like DrCT2's Figure 2: the verdict ("This patient may
    have: …"), findings with probabilities, the attention of every sampled slice (when the model
    reported it; else the key slices' scores as bars) and the ranked key slices with their
    highlighted areas."""
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    big, mid, small = _font(28), _font(18), _font(14)
    draw.text((24, 16), title, fill=TEXT, font=big)
    draw.text((24, 54), subtitle, fill=TEXT, font=small)
    y = 84
    if demo_text:
        draw.rectangle((16, y, width - 16, y + 34), outline=WARN, width=2)
        draw.text((28, y + 6), demo_text, fill=WARN, font=mid)
        y += 46
    draw.text((24, y), _verdict(findings), fill=PRESENT if any(f.present for f in findings) else ABSENT, font=mid)
    y += 30
    draw.text((24, y), "Findings (probability / threshold)", fill=TEXT, font=mid)
    y += 28
    for f in findings[:12]:
        color = PRESENT if f.present else ABSENT
        state = "present" if f.present else "absent"
        draw.text((32, y), f"{f.label}: {f.probability:.3f} / {f.threshold:.2f}  {state}  ({f.meaning})",
                  fill=color, font=small)
        bar_x = width - 276
        draw.rectangle((bar_x, y + 2, bar_x + 240, y + 14), outline=TEXT)
        draw.rectangle((bar_x, y + 2, bar_x + int(240 * f.probability), y + 14), fill=color)
        y += 22
    y += 10
    if sampled:
        y = _attention_strip(img, draw, y, sampled)
    if thumbs:
        if not sampled:
            draw.text((24, y), "Key slices: score by slice (bars), ranked thumbnails", fill=TEXT, font=mid)
            y += 28
            chart_h = 90
            ordered = sorted(thumbs, key=lambda t: t.slice_index)
            top = max(t.score for t in thumbs) or 1.0
            bar_w = max(8, min(60, (width - 48) // (2 * len(ordered))))
            for i, t in enumerate(ordered):
                x = 32 + i * 2 * bar_w
                h = int(chart_h * max(t.score, 0.0) / top)
                draw.rectangle((x, y + chart_h - h, x + bar_w, y + chart_h), fill=BAR)
                draw.text((x, y + chart_h + 2), str(t.slice_index), fill=TEXT, font=small)
            y += chart_h + 24
        side = max(64, min(200, height - y - 40, (width - 32) // len(thumbs) - 16))  # all of them in a row
        for i, t in enumerate(sorted(thumbs, key=lambda t: t.rank)[: (width - 32) // (side + 16)]):
            x = 24 + i * (side + 16)
            thumb = Image.fromarray(t.image).resize((side, side), Image.Resampling.BILINEAR)
            img.paste(thumb, (x, y))
            draw.text((x, y + side + 2), f"#{t.rank} slice {t.slice_index} score {t.score:.3f}", fill=TEXT, font=small)
    return np.asarray(img, dtype=np.uint8)
