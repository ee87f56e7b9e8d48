"""axspa-sij: HLA-B27-negative axial spondyloarthritis from sacroiliac T1 and fat-suppressed MRI (MSFANet).

In progress (issue 18): the network (:mod:`.network`) and its configuration (:mod:`.config`)
are here and tested; the preprocessing, the joint localiser, the model behind the contract,
its registration and its training recipe are not yet, so the node does not route to it.
"""
