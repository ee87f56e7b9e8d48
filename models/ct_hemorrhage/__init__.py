"""Head-CT hemorrhage: DrCT2 (Wang, Fu, Li, Pei; Medical Physics 2022), slice attention and zoom-in.

``network``: the paper's networks (primary DrCT1, attention proposal slices, knowledge fusion)
and loss; ``preprocess``: fixed-length slice sampling and CT windows, shared by training and the
node; ``model``: the entries (specs with coded labels, weights loading, predict). They join
``models.default_registry`` once demo weights can be built (issue 4).
"""
