"""The phantom core: grids, warps, balance, the registry's errors, the command line."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from neuroread.training.phantoms.geometry import Grid, SubjectWarp
from neuroread.training.phantoms.registry import allocate, get_task, parse_balance


def test_grid_positions_match_itk_geometry():
    rot = sitk.VersorTransform((1, 0, 0), 0.2).GetMatrix()
    grid = Grid.centred(np.array([10.0, -5.0, 40.0]), (5, 7, 9), (0.8, 0.9), 2.5, 3.0, np.array(rot).reshape(3, 3))
    img = grid.to_sitk(np.zeros(grid.shape, np.uint8))
    for k, r, c in [(0, 0, 0), (4, 6, 8), (2, 3, 1)]:
        expected = grid.position(k) + c * 0.9 * grid.row_dir + r * 0.8 * grid.col_dir
        assert np.allclose(img.TransformIndexToPhysicalPoint((c, r, k)), expected)
        assert np.allclose(grid.slice_points(k)[r, c], expected, atol=1e-4)
    centre = img.TransformContinuousIndexToPhysicalPoint((4.0, 3.0, 2.0))
    assert np.allclose(centre, [10.0, -5.0, 40.0])


def test_grid_index_and_lps_convert_both_ways():
    rot = np.array(sitk.VersorTransform((0.3, 1, 0.2), 0.4).GetMatrix()).reshape(3, 3)
    grid = Grid.centred(np.array([3.0, 2.0, 1.0]), (6, 8, 10), (0.7, 1.1), 2.0, 2.0, rot, base="coronal")
    idx = np.array([[0.0, 0.0, 0.0], [5.0, 7.0, 9.0], [2.5, 1.25, 3.0]])
    lps = grid.index_to_lps(idx)
    img = grid.to_sitk(np.zeros(grid.shape, np.uint8))
    for (k, r, c), p in zip(idx, lps):
        assert np.allclose(img.TransformContinuousIndexToPhysicalPoint((c, r, k)), p)
    assert np.allclose(grid.lps_to_index(lps), idx)


def test_grid_refuses_bad_values():
    with pytest.raises(ValueError, match="spacings"):
        Grid((2, 2, 2), (0.0, 1.0), 1.0, 1.0, np.zeros(3), np.array([1, 0, 0]), np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="base"):
        Grid.centred(np.zeros(3), (2, 2, 2), (1.0, 1.0), 1.0, 1.0, np.eye(3), base="oblique")


def test_warp_places_template_in_scanner_and_back():
    warp = SubjectWarp(np.random.default_rng(0), centre=np.array([5.0, 10.0, -40.0]), angles_deg=(10, 3, -4),
                       scale=(1.05, 0.95, 1.0), warp_mm=0.0)
    q = np.array([[10.0, -20.0, 30.0]])
    assert np.allclose(warp(warp.to_patient(q)), q, atol=1e-3)


def test_allocate_gives_exact_counts_and_seeded_order():
    labels = allocate(("a", "b", "c"), {"a": 0.5, "b": 0.3, "c": 0.2}, 10, seed=1)
    assert sorted(labels) == ["a"] * 5 + ["b"] * 3 + ["c"] * 2
    assert labels == allocate(("a", "b", "c"), {"a": 0.5, "b": 0.3, "c": 0.2}, 10, seed=1)
    assert labels != allocate(("a", "b", "c"), {"a": 0.5, "b": 0.3, "c": 0.2}, 10, seed=2)


def test_balance_errors_name_the_problem():
    assert parse_balance("ms=1,csvd=3", ("ms", "csvd")) == {"ms": 0.25, "csvd": 0.75}
    with pytest.raises(ValueError, match="unknown class 'mss'"):
        parse_balance("mss=1", ("ms", "csvd"))
    with pytest.raises(ValueError, match="CLASS=WEIGHT"):
        parse_balance("ms", ("ms", "csvd"))
    with pytest.raises(ValueError, match="not a number"):
        parse_balance("ms=x", ("ms", "csvd"))


def test_unknown_task_suggests_the_right_name():
    with pytest.raises(ValueError, match="Did you mean ct-hemorrhage"):
        get_task("ct-hemorhage")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neuroread.cli", *args], capture_output=True, text=True)


def test_cli_help_teaches():
    res = _cli("phantoms", "--help")
    assert res.returncode == 0
    assert "examples:" in res.stdout and "--balance" in res.stdout and "ct-hemorrhage" in res.stdout


def test_cli_rejects_bad_balance_with_a_clear_error(tmp_path):
    res = _cli("phantoms", "ct-hemorrhage", "--n", "2", "--out", str(tmp_path), "--balance", "foo=1")
    assert res.returncode == 2
    assert "unknown class 'foo'" in res.stderr
    assert not any(tmp_path.iterdir())


def test_cli_makes_all_tasks_with_a_preview(tmp_path):
    png = tmp_path / "preview.png"
    res = _cli("phantoms", "all", "--n", "1", "--seed", "4", "--out", str(tmp_path / "set"), "--preview", str(png), "-q")
    assert res.returncode == 0, res.stderr
    from PIL import Image

    with Image.open(png) as im:
        assert im.width > 200 and im.height > 5 * 100
    for task in ("ct-hemorrhage", "ms-csvd", "cmb-svd", "axspa-sij", "ad-lrp"):
        assert (tmp_path / "set" / task / "manifest.csv").is_file()


def test_a_set_is_the_same_whatever_the_number_of_workers(tmp_path):
    from neuroread.training.phantoms.registry import generate_set

    generate_set("ms-csvd", 3, 9, tmp_path / "one", workers=1, progress=False)
    generate_set("ms-csvd", 3, 9, tmp_path / "two", workers=2, progress=False)
    one = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    two = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    assert one == two and len(one) > 3
    for rel in one:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes(), rel


def test_study_i_does_not_depend_on_the_set_size(tmp_path):
    from neuroread.training.phantoms.registry import generate_set

    generate_set("ct-hemorrhage", 1, 4, tmp_path / "small", balance="normal=1", workers=1, progress=False)
    generate_set("ct-hemorrhage", 2, 4, tmp_path / "large", balance="normal=1", workers=1, progress=False)
    first = "ct-hemorrhage-s4-0000"
    for f in (tmp_path / "small" / first).rglob("*.dcm"):
        assert f.read_bytes() == (tmp_path / "large" / first / f.relative_to(tmp_path / "small" / first)).read_bytes()
