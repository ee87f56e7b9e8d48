"""axspa-sij: HLA-B27-negative axial spondyloarthritis from sacroiliac T1 and fat-suppressed MRI (MSFANet).

In progress (issue 18): the network (:mod:`.network`), its configuration (:mod:`.config`) and
the preprocessing (:mod:`.preprocess`: both series onto one crop, a rigid registration when
their frames of reference differ, maps back) are here and tested; the joint localiser, the
model behind the contract, its registration and its training recipe are not yet, so the node
does not route to it.
"""
