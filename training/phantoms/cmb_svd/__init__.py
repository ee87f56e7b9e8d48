"""cmb-svd: brain SWI with cerebral microbleeds; the study's class is the small-vessel-disease subtype.

One series: a 3D susceptibility-weighted gradient echo reconstructed as axial slices (the
SWI/SWAN/SWIp magnitude each vendor sends). The subtypes differ in *where* the microbleeds
are, not in how many there are:

- ``caa`` (cerebral amyloid angiopathy): strictly lobar, cortico-subcortical microbleeds with a
  posterior (occipital/parietal) predominance, often superficial siderosis (dark curvilinear
  lining of a few cortical sulci); little white-matter disease.
- ``arteriolosclerosis`` (hypertensive arteriolosclerosis): deep (basal ganglia, thalamus) and
  infratentorial (brainstem, cerebellum) microbleeds, some lobar ones allowed (mixed pattern),
  periventricular/deep white-matter hyperintensity that spares the anterior temporal lobes.
- ``cadasil``: white-matter hyperintensity of the anterior temporal poles and external
  capsules on top of confluent periventricular disease (mildly bright on SWI), microbleeds
  mostly thalamic/deep, some lobar and brainstem; younger patients.

Counts overlap (1-25 in every class), so a microbleed count or volume cannot tell the
subtypes apart. Every class also has the mimics a reader must not call microbleeds: veins
(medullary veins radial to the ventricles, cortical veins, deep veins, dural sinuses), flow
voids of the basal and Sylvian arteries, globus pallidus, choroid plexus and pineal
calcification, physiological iron of the deep nuclei and susceptibility drop-out at the skull
base. Mimics are kept apart from the microbleeds and never enter the microbleed mask.

Lesions live in template space (MNI, LPS): sites come from the Neuromorphometrics labels; the
scene receives patient points ``p``, computes ``q = warp(p)`` and evaluates tissue fractions,
white-matter disease, mimics and microbleeds at ``q``.

The package, one idea a module: :mod:`.sites` (template-space site maps, cached per process),
:mod:`.mimics` (veins, flow voids, calcifications), :mod:`.lesions` (microbleeds, siderosis,
white-matter disease), :mod:`.subject` (one subject, no pixels), :mod:`.scene` (rendering)
and :mod:`.study` (the series, mask, truth, baseline and ``TASK``).
"""
from __future__ import annotations

from .lesions import Microbleed
from .sites import _sites, lobe_of  # noqa: F401  (_sites: the tests inspect the site maps)
from .study import MASK, TASK, TASK_NAME, baseline, generate
from .subject import CLASSES, Subject, plan_subject

__all__ = ["CLASSES", "MASK", "TASK", "TASK_NAME", "Microbleed", "Subject", "baseline", "generate", "lobe_of",
           "plan_subject"]
