"""Packaging's one dynamic part: the design card's top-level folders installed under one import
namespace, ``neuroread`` (``node/`` → ``neuroread.node``, ``models/`` → ``neuroread.models``,
``training/`` → ``neuroread.training``; ``neuroread/`` is the namespace root and the CLI).

Everything else is declared in ``pyproject.toml``. This file exists because the mapping has to
list every subpackage, and a list kept by hand would miss the next model's package; setuptools'
``find_packages`` walks each folder instead. Editable installs (``pip install -e .``) map the
same names to the same folders, so ``neuroread.node`` is ``node/`` in the checkout; no other
top-level name is installed (``tests/unit/test_packaging.py`` builds the wheel and checks).
"""
from setuptools import find_packages, setup

FOLDERS = {"neuroread": "neuroread", "neuroread.node": "node", "neuroread.models": "models",
           "neuroread.training": "training"}

packages, package_dir = [], {}
for name, folder in FOLDERS.items():
    package_dir[name] = folder
    packages += [name] + [f"{name}.{sub}" for sub in find_packages(folder)]

# Demo weights committed beside each model (models/<name>/weights/*.pt with their *.card.json)
# travel in the wheel, so an installed node runs without training anything.
setup(packages=packages, package_dir=package_dir,
      package_data={"neuroread.models": ["*/weights/*.pt", "*/weights/*.card.json"]})
