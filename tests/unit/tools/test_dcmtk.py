"""dcmtk's tools are found by name even when the virtual environment, whose pynetdicom installs
namesakes (storescu, storescp, echoscu, findscu), comes first on PATH."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from neuroread.node.tools.dcmtk import DcmtkMissing, dcmtk_tool

VENV_BIN = Path(sys.executable).parent


@pytest.mark.parametrize("name", ["storescu", "storescp", "echoscu"])
def test_dcmtk_tool_skips_the_activated_environments_namesake(name, monkeypatch):
    if not (VENV_BIN / name).exists():
        pytest.skip(f"pynetdicom installed no {name} into {VENV_BIN}")
    monkeypatch.setenv("PATH", f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")  # as after `source .venv/bin/activate`
    dcmtk_tool.cache_clear()
    found = dcmtk_tool(name)
    assert Path(found).parent != VENV_BIN
    version = subprocess.run([found, "--version"], capture_output=True, text=True).stdout
    assert "dcmtk" in version.lower() or "OFFIS" in version
    dcmtk_tool.cache_clear()


def test_no_dcmtk_says_what_to_install(monkeypatch):
    monkeypatch.setenv("PATH", str(VENV_BIN))  # only the namesakes
    dcmtk_tool.cache_clear()
    with pytest.raises(DcmtkMissing, match="apt-get install dcmtk"):
        dcmtk_tool("storescu")
    dcmtk_tool.cache_clear()
