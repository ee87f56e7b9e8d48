"""dcmtk's command-line tools by name, never pynetdicom's namesakes.

pynetdicom installs console scripts called ``storescu``, ``storescp``, ``echoscu`` and ``findscu``
into the virtual environment's ``bin``; with the environment activated (the usual habit) they come
first on ``PATH`` and shadow dcmtk's, whose options (``+sd +r +sp``) they do not take. Whatever
means dcmtk (the ingest benchmark, the tests) asks :func:`dcmtk_tool`, which looks on ``PATH``
with every virtual environment's ``bin`` left out and checks that ``--version`` names dcmtk.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path


class DcmtkMissing(FileNotFoundError):
    """dcmtk's tool is not installed (or only a namesake is on PATH); the message says what to do."""


def _in_a_venv(directory: str) -> bool:
    """``directory`` is a virtual environment's ``bin`` (its parent holds ``pyvenv.cfg``)."""
    path = Path(directory or ".").resolve()
    return (path.parent / "pyvenv.cfg").exists() or path == (Path(sys.prefix) / "bin").resolve()


@functools.lru_cache(maxsize=None)
def dcmtk_tool(name: str) -> str:
    """The absolute path of dcmtk's ``name`` (``storescu``, ``storescp``, ``echoscu``…).

    Raises :class:`DcmtkMissing` when there is none outside virtual environments, or when the
    one found does not say it is dcmtk's (``$dcmtk: storescu v3.6.7 …`` or OFFIS)."""
    path = os.pathsep.join(d for d in os.environ.get("PATH", os.defpath).split(os.pathsep) if not _in_a_venv(d))
    found = shutil.which(name, path=path)
    if found is None:
        raise DcmtkMissing(f"dcmtk's {name} is not on PATH outside a virtual environment: "
                           "install Debian's dcmtk (apt-get install dcmtk, or bash .ci/setup)")
    run = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30)
    if not re.search(r"dcmtk|OFFIS", run.stdout + run.stderr, re.IGNORECASE):
        raise DcmtkMissing(f"{found} is not dcmtk's {name} (--version says {(run.stdout + run.stderr)[:120]!r}): "
                           "install Debian's dcmtk")
    return found
