"""What the receive tests share: one small phantom series, made once per session."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def series(tmp_path_factory) -> list[Path]:
    """One small MR phantom series (explicit VR LE), as written by the phantom generator."""
    from neuroread.training.phantoms.registry import make_study
    from neuroread.training.phantoms.writer import write_study

    out = tmp_path_factory.mktemp("phantom")
    write_study(make_study("ms-csvd", 7, 0, "ms", "small"), out)
    files = sorted(out.glob("*/S01/IM*.dcm"))
    assert len(files) >= 10
    return files
