"""neuroread: an AI node for neuro-imaging beside a PACS.

One import namespace for everything the distribution installs (docs/architecture.md):

* :mod:`neuroread.node` (folder ``node/``): the runtime, one package per stage of the flow
  (receive → spool → assemble → route → jobs → infer → encode → deliver, plus intake) and the
  app that wires them;
* :mod:`neuroread.models` (``models/``): the model contract and the networks;
* :mod:`neuroread.training` (``training/``): phantoms, datasets, training, metrics;
* :mod:`neuroread.cli`: the ``neuroread`` command, the composition root above node and training
  (``python -m neuroread`` runs it too).
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("neuroread")
except PackageNotFoundError:  # a checkout on sys.path without an install
    __version__ = "0+unknown"
