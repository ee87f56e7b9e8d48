"""Explanation heatmaps as float32 Parametric Maps on the source geometry.

One PM instance per heatmap (one map per label or class and per branch), all in one new
series. The real-world value mapping is the identity over the heatmap's own declared value
range (:attr:`neuroread.models.Heatmap.value_range`: e.g. 0..1 for attention, -r..r for signed
relevance), never the map's min and max, so two maps of the same kind read on the same scale;
the unit is "no units" (model scores, not a physical quantity). The LUT label says the kind,
the LUT explanation what the map explains (label or class, branch) and whether it is signed;
the VOI window covers the value range, centred on 0 for signed maps.
"""
from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from neuroread.models import Heatmap

from .context import Job, ensure_laterality, freeze_dimension_uid

KIND_TEXT = {"attention": "attention", "lesion_map": "lesion probability", "gradcam": "Grad-CAM",
             "lrp": "LRP relevance",
             "guided_backprop": "guided backpropagation", "mask": "mask", "instance_weight": "MIL instance weight"}


def describe(heat: Heatmap) -> str:
    """``"<kind> of <label or class>[, <branch> branch][, signed]"``: what a map shows, in words."""
    text = f"{KIND_TEXT[heat.kind]} of {heat.explains}"
    if heat.branch:
        text += f", {heat.branch} branch"
    return text + (", signed" if heat.signed else "")


def build_parametric_maps(job: Job) -> list[pydicom.Dataset]:
    out = []
    for index, heat in enumerate(job.result.heatmaps):
        sources = job.instances_of(heat.series_instance_uid)
        shape = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
        if heat.array.shape != shape:
            raise ValueError(f"heatmap {index} ({heat.kind}): shape {heat.array.shape} is not its series' grid {shape}")
        pixels = np.ascontiguousarray(heat.array, dtype=np.float32)
        low, high = (float(v) for v in heat.value_range)
        what = describe(heat)
        mapping = hd.pm.RealWorldValueMapping(
            lut_label=heat.kind[:16],
            lut_explanation=what[:64],
            unit=codes.UCUM.NoUnits,
            value_range=(low, high),
            slope=1.0,
            intercept=0.0,
        )
        if heat.signed:  # symmetric around 0: positive and negative evidence read alike
            reach = max(abs(low), abs(high))
            centre, width = 0.0, 2.0 * reach
        else:
            centre, width = (low + high) / 2.0, high - low
        pm = hd.pm.ParametricMap(
            source_images=sources,
            pixel_array=pixels,
            manufacturer_model_name=job.info.device_name,
            software_versions=job.info.software_version,
            device_serial_number=job.info.device_serial_number,
            contains_recognizable_visual_features=False,
            real_world_value_mappings=[mapping],
            voi_lut_transformations=[hd.VOILUTTransformation(
                window_center=centre, window_width=width, voi_lut_function=hd.VOILUTFunctionValues.LINEAR_EXACT)],
            content_label=heat.kind.upper()[:16],
            content_description=f"{job.spec.name} {what}"[:64],
            series_description=f"{job.spec.name} explanation maps"[:64],
            **job.common_kwargs("pm", index),
        )
        ensure_laterality(pm)
        freeze_dimension_uid(pm, job.uids.other("pm", "dimension-organization", index))
        out.append(pm)
    return out
