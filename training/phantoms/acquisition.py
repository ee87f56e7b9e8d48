"""What a scanner does to the anatomy: contrast, noise, bias field, stored values.

MR sequences are described by the attributes a scanner writes (ScanningSequence,
SequenceVariant, TR/TE/TI, flip angle, ImageType…) in each vendor's habits, so that a router
must read acquisition parameters, not the SeriesDescription, to tell them apart.
"""
from __future__ import annotations

import numpy as np

from .geometry import Grid
from .study import Scanner

# Relative signal of each head tissue per MR contrast (white matter = 1 on T1, CSF dark on
# FLAIR, fat bright on T1 and dark on STIR). Per-subject jitter is applied by `tissue_signal`.
MR_SIGNAL = {
    "FLAIR": {"gm": 1.15, "wm": 0.85, "csf": 0.08, "bone": 0.03, "diploe": 0.35, "scalp": 0.55, "fat": 0.9, "air": 0.0},
    "SWI": {"gm": 0.82, "wm": 0.95, "csf": 1.05, "bone": 0.05, "diploe": 0.3, "scalp": 0.6, "fat": 0.7, "air": 0.0},
    "T1": {"gm": 0.62, "wm": 1.0, "csf": 0.18, "bone": 0.04, "diploe": 0.55, "scalp": 0.45, "fat": 1.25, "air": 0.0},
}


def tissue_signal(rng: np.random.Generator, contrast: str, jitter: float = 0.05) -> dict[str, float]:
    """Signal per tissue for ``contrast`` with subject/scanner variation of ±``jitter``."""
    base = MR_SIGNAL[contrast]
    return {k: float(v * (1.0 + rng.uniform(-jitter, jitter))) for k, v in base.items()}


def mix(fractions: dict[str, np.ndarray], signal: dict[str, float]) -> np.ndarray:
    """Signal of a voxel as the fraction-weighted sum of its tissues' signals."""
    out = None
    for name, value in signal.items():
        if name in fractions:
            term = fractions[name] * np.float32(value)
            out = term if out is None else out + term
    if out is None:
        raise ValueError("no tissue in common between fractions and signal")
    return out


def bias_field(rng: np.random.Generator, grid: Grid, strength: float = 0.15) -> np.ndarray:
    """A smooth multiplicative receive-coil field (mean 1, about ±``strength``)."""
    nz, ny, nx = grid.shape
    z, y, x = np.meshgrid(
        np.linspace(-1, 1, nz, dtype=np.float32),
        np.linspace(-1, 1, ny, dtype=np.float32),
        np.linspace(-1, 1, nx, dtype=np.float32),
        indexing="ij",
    )
    c = rng.normal(0.0, 1.0, size=9).astype(np.float32)
    f = c[0] * x + c[1] * y + c[2] * z + 0.5 * (c[3] * x * y + c[4] * y * z + c[5] * x * z + c[6] * x**2 + c[7] * y**2 + c[8] * z**2)
    f = f / max(float(np.abs(f).max()), 1e-6)
    return (1.0 + strength * f).astype(np.float32)


def rician(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of signal plus complex Gaussian noise (MR's Rician noise)."""
    re = signal + rng.normal(0.0, sigma, signal.shape).astype(np.float32)
    im = rng.normal(0.0, sigma, signal.shape).astype(np.float32)
    return np.sqrt(re * re + im * im)


def to_stored(values: np.ndarray, max_stored: int = 4095) -> np.ndarray:
    """Scale a non-negative MR image to uint16 stored values with its maximum at ``max_stored``."""
    top = float(np.percentile(values, 99.9)) or 1.0
    return np.clip(np.rint(values / top * max_stored * 0.92), 0, max_stored).astype(np.uint16)


def mr_window(stored: np.ndarray) -> tuple[float, float]:
    """A display window as scanners set it: covering the tissue, not the background noise.

    Percentiles are taken over voxels brighter than a tenth of the bright end, so the air
    around the head (often half the field of view) does not drag the window down.
    """
    top = float(np.percentile(stored, 99.5)) if stored.size else 0.0
    tissue = stored[stored > 0.1 * top]
    if tissue.size == 0:
        return 0.5, 1.0
    lo, hi = np.percentile(tissue, [1, 99.5])
    return float(round((lo + hi) / 2)), float(round(max(hi - lo, 1.0)))


def _seq_name(scanner: Scanner, siemens: str, ge: str, philips: str) -> str:
    return {"siemens": siemens, "ge": ge, "philips": philips}[scanner.style]


def mr_attributes(rng: np.random.Generator, sequence: str, scanner: Scanner, grid: Grid) -> tuple[dict, list[str]]:
    """Acquisition attributes and ImageType of an MR ``sequence`` as ``scanner`` writes them.

    ``sequence`` is one of FLAIR (2D T2 FLAIR), SWI (3D gradient echo, susceptibility-weighted
    magnitude/minIP), T1_MPRAGE (3D inversion-prepared gradient echo), T1_TSE (2D spin echo),
    STIR (2D inversion recovery, short TI), T2_SPAIR (2D fat-suppressed turbo spin echo).
    """
    b0 = scanner.field_strength or 1.5
    freq = round(42.577478 * b0, 6)
    common = {
        "MagneticFieldStrength": b0,
        "ImagingFrequency": freq,
        "ImagedNucleus": "1H",
        "NumberOfAverages": 1,
        "PercentSampling": 100,
        "PercentPhaseFieldOfView": 100,
        "PixelBandwidth": float(rng.choice([130, 200, 260, 300])),
        "ReceiveCoilName": _seq_name(scanner, "HeadNeck_20", "HNU", "dS Head_32ch"),
        "TransmitCoilName": "Body",
        "InPlanePhaseEncodingDirection": "ROW",
        "PatientWeight": float(rng.integers(50, 100)),
        "AngioFlag": "N",
        "EchoNumbers": 1,
        "MRAcquisitionType": "2D",
        "AcquisitionMatrix": [0, int(grid.shape[2]), int(grid.shape[1]), 0],
        "dBdt": 0,
        "SAR": round(float(rng.uniform(0.1, 1.5)), 3),
    }
    original = ["ORIGINAL", "PRIMARY"]
    if sequence == "FLAIR":
        attrs = {
            "ScanningSequence": ["SE", "IR"],
            "SequenceVariant": ["SK", "SP", "MP"],
            "ScanOptions": ["IR", "FS"] if scanner.style == "philips" else ["IR"],
            "RepetitionTime": float(rng.choice([8000, 9000, 9500, 11000])),
            "EchoTime": float(rng.choice([81, 90, 120, 125])),
            "InversionTime": float(rng.choice([2370, 2500, 2800])),
            "FlipAngle": float(rng.choice([90, 150, 160])),
            "EchoTrainLength": int(rng.choice([16, 18, 24])),
            "SequenceName": _seq_name(scanner, "*tir2d1_16", "FLAIR", "IR_TSE"),
        }
        image_type = original + (["M", "ND", "NORM"] if scanner.style == "siemens" else ["OTHER"])
    elif sequence == "SWI":
        attrs = {
            "ScanningSequence": ["GR"],
            "SequenceVariant": ["SP", "OSP"] if scanner.style != "ge" else ["SS", "SP"],
            "ScanOptions": ["FC"] if scanner.style != "philips" else ["PFP"],
            "MRAcquisitionType": "3D",
            "RepetitionTime": float(rng.choice([27, 35, 49])),
            "EchoTime": float(rng.choice([20, 25, 40])),
            "FlipAngle": float(rng.choice([15, 20])),
            "EchoTrainLength": 1,
            "SequenceName": _seq_name(scanner, "*swi3d1r", "SWAN", "FFE"),
        }
        image_type = {
            "siemens": ["DERIVED", "PRIMARY", "SWI", "NORM", "DIS2D"],
            "ge": ["ORIGINAL", "PRIMARY", "SWAN", "NONE"],
            "philips": ["ORIGINAL", "PRIMARY", "M_SWI", "M", "SWI"],
        }[scanner.style]
    elif sequence == "T1_MPRAGE":
        attrs = {
            "ScanningSequence": ["GR", "IR"],
            "SequenceVariant": ["SK", "SP", "MP"],
            "ScanOptions": ["IR"],
            "MRAcquisitionType": "3D",
            "RepetitionTime": float(rng.choice([1900, 2300, 2400])) if scanner.style != "philips" else 8.1,
            "EchoTime": float(rng.choice([2.3, 2.98, 3.4])),
            "InversionTime": float(rng.choice([900, 1000, 1100])),
            "FlipAngle": float(rng.choice([8, 9, 12])),
            "EchoTrainLength": 1,
            "SequenceName": _seq_name(scanner, "*tfl3d1_16ns", "BRAVO", "T1TFE"),
        }
        image_type = original + (["M", "ND", "NORM"] if scanner.style == "siemens" else ["OTHER"])
    elif sequence == "T1_TSE":
        attrs = {
            "ScanningSequence": ["SE"],
            "SequenceVariant": ["SK", "SP", "OSP"],
            "ScanOptions": ["SAT1"] if scanner.style == "siemens" else ["FAST_GEMS"] if scanner.style == "ge" else [""],
            "RepetitionTime": float(rng.choice([450, 550, 650, 700])),
            "EchoTime": float(rng.choice([9.1, 11, 12, 14])),
            "FlipAngle": float(rng.choice([90, 150])),
            "EchoTrainLength": int(rng.choice([3, 4, 5])),
            "SequenceName": _seq_name(scanner, "*tse2d1_3", "FSE", "TSE"),
        }
        image_type = original + (["M", "NORM", "DIS2D"] if scanner.style == "siemens" else ["OTHER"])
    elif sequence == "STIR":
        attrs = {
            "ScanningSequence": ["SE", "IR"],
            "SequenceVariant": ["SK", "SP", "MP"],
            "ScanOptions": ["IR"],
            "RepetitionTime": float(rng.choice([3500, 4000, 4800])),
            "EchoTime": float(rng.choice([33, 40, 60])),
            "InversionTime": float(rng.choice([150, 160, 180])),
            "FlipAngle": float(rng.choice([90, 150])),
            "EchoTrainLength": int(rng.choice([7, 11, 13])),
            "SequenceName": _seq_name(scanner, "*tir2d1_11", "FSE-IR", "IR_TSE"),
        }
        image_type = original + (["M", "NORM", "DIS2D"] if scanner.style == "siemens" else ["OTHER"])
    elif sequence == "T2_SPAIR":
        attrs = {
            "ScanningSequence": ["SE"],
            "SequenceVariant": ["SK", "SP", "OSP"],
            "ScanOptions": ["FS", "SFS"] if scanner.style == "siemens" else ["FS"],
            "RepetitionTime": float(rng.choice([3000, 3800, 4500])),
            "EchoTime": float(rng.choice([60, 70, 80])),
            "FlipAngle": float(rng.choice([90, 150])),
            "EchoTrainLength": int(rng.choice([13, 15, 17])),
            "SequenceName": _seq_name(scanner, "*tse2d1_15", "FSE", "TSE_SPAIR"),
        }
        image_type = original + (["M", "NORM", "DIS2D"] if scanner.style == "siemens" else ["OTHER"])
    else:
        raise ValueError(f"unknown MR sequence {sequence!r}")
    return {**common, **attrs}, image_type
