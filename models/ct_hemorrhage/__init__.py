"""Head-CT hemorrhage: DrCT2 (Wang, Fu, Li, Pei; Medical Physics 2022), slice attention and zoom-in.

``config``: the architecture as a value (the paper's and the demo presets); ``network``: the
paper's networks (primary DrCT1, attention proposal slices, knowledge fusion), the demo's lesion
head, the loss; ``preprocess``: fixed-length slice sampling and CT windows, shared by training and
the node; ``model``: the entries (specs with coded labels, weights loading, predict), registered
by the entry point ``ct-hemorrhage``; ``weights/``: the committed demo weights and their card.
Its training recipe is :mod:`neuroread.training.recipes.ct_hemorrhage`.
"""
