"""Helpers shared by the tests (importable as ``support``: pytest puts ``tests/`` on sys.path)."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
