"""How often the microbleed model calls a mimic a microbleed, on phantoms (their truth lists the
mimics: veins, flow voids, calcifications).

``python -m neuroread.training.recipes.cmb_svd.mimics --data DIR [--weights FILE]`` runs the
model (its committed demo weights by default) on every phantom under ``DIR`` and prints, per
point-like mimic type (calcifications, flow voids), the share that has a reported microbleed
within :data:`RADIUS_MM` of its centre, and the false positives (reported microbleeds overlapping
no annotated one) by the nearest mimic within 10 mm.
"""
from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

RADIUS_MM = 6.0
POINT_LIKE = ("calcification", "flow_void")


def mimic_report(model, records, *, progress: bool = True) -> dict:
    """Counts per mimic type (``mimics``, ``detected``) and false positives by nearest mimic."""
    mimics, detected, false_positives = collections.Counter(), collections.Counter(), collections.Counter()
    for record in tqdm(records, desc="mimics", unit="series", leave=False, disable=None if progress else True):
        volume, _ = record.load()
        ids = record.load_mask(volume)
        truth = json.loads((record.mask.parent.parent / "truth.json").read_text())
        found = model.microbleeds(volume)
        centroids = np.asarray(found.centroids, float).reshape(-1, 3)
        for m in truth["mimics"]:
            if m["type"] in POINT_LIKE:
                mimics[m["type"]] += 1
                if len(centroids) and np.linalg.norm(centroids - m["centroid_lps"], axis=1).min() <= RADIUS_MM:
                    detected[m["type"]] += 1
        where = np.array([m["centroid_lps"] for m in truth["mimics"]], float).reshape(-1, 3)
        for bleed, centre in zip(found.microbleeds, centroids):
            if (ids[bleed.mask] > 0).any():
                continue
            distance = np.linalg.norm(where - centre, axis=1) if len(where) else np.array([np.inf])
            j = int(np.argmin(distance))
            false_positives[truth["mimics"][j]["type"] if distance[j] <= 10 else "none within 10 mm"] += 1
    return {"scans": len(records), "mimics": dict(mimics), "detected": dict(detected),
            "false_positives": dict(false_positives)}


def main(argv: list[str] | None = None) -> int:
    from neuroread.models import default_registry

    from . import RECIPE

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="a folder of cmb-svd phantoms")
    parser.add_argument("--weights", type=Path, help="checkpoint (default: the committed demo weights)")
    args = parser.parse_args(argv)
    registry = default_registry()
    model = registry.create("cmb-svd")
    model.load(args.weights or registry.entry("cmb-svd").demo_weights, "cpu")
    records, _ = RECIPE.read_records(args.data, "phantoms")
    report = mimic_report(model, records)
    for kind, n in report["mimics"].items():
        hit = report["detected"].get(kind, 0)
        print(f"{kind}: {hit} of {n} called a microbleed ({hit / n:.1%}, a microbleed within {RADIUS_MM:g} mm)")
    fp = report["false_positives"]
    print(f"false positives in {report['scans']} scans by nearest mimic: " +
          ", ".join(f"{k} {v} ({v / report['scans']:.2f} per scan)" for k, v in sorted(fp.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
