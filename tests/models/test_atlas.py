"""The atlas at inference: location classes of known template points, and a phantom SWI
registered to the MNI template puts its microbleeds in their true location class."""
from __future__ import annotations

import json

import numpy as np
import pytest

from neuroread.models import atlas
from neuroread.models.cmb_svd.context import CONTEXT_FEATURES, regions, scan_context
from neuroread.training.phantoms.anatomy import load_template


def _mni(*point):
    return np.array(point, float) * np.array([-1.0, -1.0, 1.0])  # MNI (RAS) -> template LPS


def test_known_places_have_their_location_class_and_region():
    t = load_template()
    thalamus = t.region_centroid("Left_Thalamus_Proper")
    brainstem = t.region_centroid("Brain_Stem")
    cerebellum = t.region_centroid("Right_Cerebellum_Exterior")
    occipital = t.region_centroid("Left_Calc_calcarine_cortex")
    points = np.stack([thalamus, brainstem, cerebellum, occipital,
                       _mni(-24, -8, 8),   # left posterior limb of the internal capsule: white matter by deep grey
                       _mni(-38, 20, 40),  # juxtacortical white matter under the middle frontal gyrus
                       ])
    assert atlas.location_class(points) == ["deep", "infratentorial", "infratentorial", "lobar", "deep", "lobar"]
    names = atlas.region_name(points)
    assert names[0] == "Left_Thalamus_Proper" and names[1] == "Brain_Stem" and "Calc" in names[3]
    assert "Cerebral_White_Matter" not in names[4] and "Cerebral_White_Matter" not in names[5]  # nearest structure


def test_a_phantom_swi_registers_and_its_microbleeds_keep_their_location_class(phantom_sets):
    from neuroread.training.recipes.cmb_svd import RECIPE

    records, _ = RECIPE.read_records(phantom_sets["cmb-svd"], "phantoms", progress=False)
    agree = total = 0
    for record in records:
        volume, _ = record.load()
        reg = atlas.register(volume)
        again = atlas.register(volume)
        assert np.array_equal(reg.transform.GetParameters(), again.transform.GetParameters())  # deterministic
        truth = json.loads((record.mask.parent.parent / "truth.json").read_text())
        points = np.array([les["centroid_lps"] for les in truth["lesions"]]).reshape(-1, 3)
        found = atlas.location_class(reg.to_template(points)) if len(points) else []
        agree += sum(a == les["location_class"] for a, les in zip(found, truth["lesions"]))
        total += len(points)
        back = reg.to_patient(reg.to_template(points))
        assert np.allclose(back, points, atol=1e-6)
        context = scan_context(volume, reg, found)
        assert context.shape == (len(CONTEXT_FEATURES),) and np.all(np.isfinite(context))
        assert abs(float(context[list(CONTEXT_FEATURES).index("signal_cortex")])) < 0.5
    assert total >= 10 and agree / total >= 0.85, f"{agree} of {total} microbleeds in their true location class"


def test_context_regions_are_where_the_anatomy_says():
    masks = regions()
    for name, mask in masks.items():
        assert mask.any(), name
    assert not (masks["periventricular"] & masks["deep"]).any()
    assert not (masks["deep_grey"] & masks["white_matter"]).any()


def test_a_series_without_a_head_does_not_register():
    from neuroread.models import SeriesVolume

    rng = np.random.default_rng(0)
    array = rng.normal(0, 1, (20, 32, 32)).astype(np.float32) ** 2
    noise = SeriesVolume("2.25.1", array, (8.0, 8.0, 8.0), (0.0, 0.0, 0.0), np.eye(3),
                         tuple(f"2.25.1.{k}" for k in range(20)), "MR")
    with pytest.raises(ValueError, match="registration to the MNI template failed"):
        atlas.register(noise)
