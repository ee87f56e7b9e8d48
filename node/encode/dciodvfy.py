"""Checking written objects with a validator we did not write: dciodvfy (dicom3tools)."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pydicom


def find_dciodvfy() -> str:
    path = shutil.which("dciodvfy")
    if path is None:
        raise FileNotFoundError("dciodvfy not found on PATH: install the Debian package dicom3tools")
    return path


def validate(ds: pydicom.Dataset, *, dciodvfy: str | None = None, timeout_s: float = 60.0) -> list[str]:
    """The ``Error`` lines dciodvfy reports for ``ds`` written as a DICOM file ([] means valid).

    Warnings are not returned; an ``Abort`` (unreadable file) or a failed run counts as an error. The node refuses to send an object with any error.
    """
    exe = dciodvfy or find_dciodvfy()
    with tempfile.TemporaryDirectory(prefix="neuroread-validate-") as tmp:
        path = Path(tmp) / "object.dcm"
        ds.save_as(path, enforce_file_format=True)
        proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=timeout_s, check=False)
    lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines()]
    errors = [line for line in lines if line.startswith(("Error", "Abort"))]
    if proc.returncode != 0 and not errors:
        errors.append(f"Error - dciodvfy exited with status {proc.returncode}")
    return errors
