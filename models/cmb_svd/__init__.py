"""cmb-svd: cerebral microbleed detection (Mask R-CNN) and small-vessel-disease subtype (MIL) on SWI.

:mod:`.model` is the node's view (spec, outputs), :mod:`.network` the detector and the MIL,
:mod:`.config` their presets, :mod:`.preprocess` the SWI canvas, :mod:`.merge` the 3D merging
of slice detections and :mod:`.context` the scan's context features. The recipe that trains it
is :mod:`neuroread.training.recipes.cmb_svd`.
"""
