"""Shared fixtures: small phantom sets made once per test session."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from training.phantoms.registry import generate_set

SET_SEED = 7
SET_N = 4


class _Sets(dict):
    """Small phantom sets, made on first use per task and kept for the session."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def __missing__(self, task: str) -> Path:
        out = self.root / task
        generate_set(task, SET_N, SET_SEED, out, size="small", workers=2, progress=False)
        self[task] = out
        return out


@pytest.fixture(scope="session")
def phantom_sets(tmp_path_factory) -> dict[str, Path]:
    """Four small studies of a task (seed 7): ``phantom_sets[task]`` is the set's folder."""
    return _Sets(tmp_path_factory.mktemp("phantoms"))


@pytest.fixture(scope="session")
def dciodvfy() -> str:
    path = shutil.which("dciodvfy")
    if path is None:
        pytest.fail("dciodvfy (Debian package dicom3tools) is required; .ci/run installs it")
    return path
