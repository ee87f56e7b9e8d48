"""Explanation heatmaps as float32 Parametric Maps on the source geometry.

One PM instance per heatmap, all in one new series. The real-world value mapping is the
identity over the map's value range, unit "no units" (the values are model scores:
attention, Grad-CAM or relevance, not a physical quantity).
"""
from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from .context import Job, ensure_laterality, freeze_dimension_uid

_KIND_TEXT = {"attention": "attention", "gradcam": "Grad-CAM", "lrp": "LRP relevance",
              "mask": "mask", "instance_weight": "MIL instance weight"}


def build_parametric_maps(job: Job) -> list[pydicom.Dataset]:
    out = []
    for index, heat in enumerate(job.result.heatmaps):
        sources = job.instances_of(heat.series_instance_uid)
        shape = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
        if heat.array.shape != shape:
            raise ValueError(f"heatmap {index} ({heat.kind}): shape {heat.array.shape} is not its series' grid {shape}")
        pixels = np.ascontiguousarray(heat.array, dtype=np.float32)
        low, high = float(pixels.min()), float(pixels.max())
        if high <= low:
            high = low + 1.0
        text = _KIND_TEXT[heat.kind]
        mapping = hd.pm.RealWorldValueMapping(
            lut_label=heat.kind[:16],
            lut_explanation=(heat.description or text)[:64],
            unit=codes.UCUM.NoUnits,
            value_range=(low, high),
            slope=1.0,
            intercept=0.0,
        )
        pm = hd.pm.ParametricMap(
            source_images=sources,
            pixel_array=pixels,
            manufacturer_model_name=job.info.device_name,
            software_versions=job.info.software_version,
            device_serial_number=job.info.device_serial_number,
            contains_recognizable_visual_features=False,
            real_world_value_mappings=[mapping],
            voi_lut_transformations=[hd.VOILUTTransformation(
                window_center=(low + high) / 2.0, window_width=high - low,
                voi_lut_function=hd.VOILUTFunctionValues.LINEAR_EXACT)],
            content_label=heat.kind.upper()[:16],
            content_description=f"{job.spec.name} {job.spec.version} {text} map"[:64],
            series_description=f"{job.spec.name} explanation maps"[:64],
            **job.common_kwargs("pm", index),
        )
        ensure_laterality(pm)
        freeze_dimension_uid(pm, job.uids.other("pm", "dimension-organization", index))
        out.append(pm)
    return out
