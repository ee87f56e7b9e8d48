"""``ad-lrp``: Alzheimer's disease vs control on a 3D T1 with layer-wise relevance propagation
and relevance per brain region (:mod:`.model`; the network in :mod:`.network`, the MNI
registration and grid in :mod:`.preprocess`, the region metrics in :mod:`.regions`)."""
