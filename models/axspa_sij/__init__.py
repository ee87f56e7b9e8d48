"""axspa-sij: HLA-B27-negative axial spondyloarthritis from sacroiliac T1 and fat-suppressed MRI (MSFANet).

In progress (issue 18): the network (:mod:`.network`), its configuration (:mod:`.config`) and
the preprocessing (:mod:`.preprocess`: both series onto one crop, a rigid registration when
their frames of reference differ, maps back), the joint localiser's network
(:mod:`.localiser`, integral regression of both joints' centres) and the model behind the
contract (:mod:`.model`: two slots, Grad-CAM of each branch on its series' grid, key T1 slices)
are here and tested with untrained networks; its training recipe, demo weights and
registration are not yet, so the node does not route to it.
"""
