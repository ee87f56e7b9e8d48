"""FLAIR: multiple sclerosis vs cerebral small vessel disease, a transfer attention network.

``config``: the architecture as a value (the paper's ResNet-50 and the demo's small ResNet);
``network``: the backbone, CBAM's channel and spatial attention, attention-weighted slice
pooling, the focal loss; ``preprocess``: the slices through the brain, normalised and resized,
shared by training and the node; ``model``: the entry (spec with coded classes, weights
loading, predict), registered as ``ms-csvd``; ``weights/``: the committed demo weights and
their card; ``MODEL_CARD.md``: what it is, how it was trained and how it did.
Its training recipe is :mod:`neuroread.training.recipes.ms_csvd`.
"""
