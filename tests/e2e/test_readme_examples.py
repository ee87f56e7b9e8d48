"""The README's hand-typed dcmtk commands work as a user types them: with the environment
activated (``source .venv/bin/activate``, where pynetdicom's own ``storescu``, ``storescp``,
``echoscu`` and ``findscu`` come first on PATH) and without it.

Each README line that runs a dcmtk network tool is run by bash as written, with only the peer's
port and the phantom folder swapped for this test's, against a dcmtk storescp acting as Orthanc;
the files must arrive.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from support import REPO
from support.peers import StoreSCP

NAMESAKES = ("storescu", "storescp", "echoscu", "findscu")


def _dcmtk_lines() -> list[str]:
    text = (REPO / "README.md").read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            command = line.split("#")[0].strip()
            if command and Path(command.split()[0]).name in NAMESAKES:
                lines.append(command)
    return lines


def test_the_readme_has_dcmtk_examples_and_names_dcmtk_by_path():
    lines = _dcmtk_lines()
    assert lines, "the README's Orthanc section sends phantoms with storescu"
    for line in lines:  # a bare name would be pynetdicom's in an activated environment
        assert line.split()[0].startswith("/usr/bin/"), line


@pytest.mark.parametrize("activated", [True, False])
def test_readme_dcmtk_commands_work_with_the_environment_activated_or_not(activated, head_ct, tmp_path):
    venv_bin = REPO / ".venv" / "bin"
    assert (venv_bin / "storescu").exists(), "pynetdicom's namesake is what this test guards against"
    path = os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
    path = [p for p in path if Path(p) != venv_bin]
    env = {**os.environ, "PATH": os.pathsep.join(([str(venv_bin)] if activated else []) + path)}
    if activated:
        env["VIRTUAL_ENV"] = str(REPO / ".venv")
    else:
        env.pop("VIRTUAL_ENV", None)
    phantoms = tmp_path / "phantoms"
    phantoms.mkdir()
    for f in head_ct[:4]:
        (phantoms / f.name).write_bytes(f.read_bytes())
    for line in _dcmtk_lines():
        scp = StoreSCP(tmp_path / f"orthanc-{abs(hash(line))}", aet="ORTHANC")
        try:
            command = line.replace(" 4242 ", f" {scp.port} ").replace("out/demo/phantoms", str(phantoms))
            done = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"{command}\n{done.stderr}"
            assert len(scp.files()) == 4, command
        finally:
            scp.stop()
