"""axspa-sij: HLA-B27-negative axial spondyloarthritis from sacroiliac T1 and fat-suppressed MRI (MSFANet).

In progress (issue 18): the network (:mod:`.network`), its configuration (:mod:`.config`) and
the preprocessing (:mod:`.preprocess`: both series onto one crop, a rigid registration when
their frames of reference differ, maps back) and the joint localiser's network
(:mod:`.localiser`, integral regression of both joints' centres) are here and tested; the model
behind the contract, its registration, its training recipe and weights are not yet, so the
node does not route to it.
"""
