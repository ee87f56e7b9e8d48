"""What the distribution installs: one ``neuroread`` namespace and nothing else, every module of it
importable, no module of the project naming ``node``, ``models`` or ``training`` bare, and the
import contracts of pyproject.toml kept (and able to fail).

The wheel is built by ``.ci/wheel`` (from a copy of the working tree, as ``.ci/lint`` builds it).
"""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from support import REPO

BARE = ("node", "models", "training")
SOURCES = ("neuroread", "node", "models", "training", "orthanc", "tests")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(["bash", str(REPO / ".ci" / "wheel"), str(tmp / "dist")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (found,) = (tmp / "dist").glob("neuroread-*.whl")
    return found


@pytest.fixture(scope="module")
def site(wheel, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(out)
    return out


def test_the_wheel_installs_only_the_neuroread_namespace(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = next(z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    top = {n.split("/")[0] for n in names}
    assert top == {"neuroread", next(t for t in top if t.endswith(".dist-info"))}, sorted(top)
    for module in ("neuroread/cli/__init__.py", "neuroread/cli/jobs.py", "neuroread/__main__.py", "neuroread/node/app/node.py",
                   "neuroread/node/receive/dimse.py", "neuroread/models/ct_hemorrhage/network.py",
                   "neuroread/training/phantoms/cmb_svd/study.py"):
        assert module in names
    assert not [n for n in names if n.startswith(("neuroread/tests", "neuroread/orthanc"))]
    assert "neuroread = neuroread.cli:main" in entry_points
    assert "[neuroread.models]" in entry_points and "ct-hemorrhage = neuroread.models.ct_hemorrhage.model:ENTRY" in entry_points


_IMPORT_ALL = """
import importlib, pkgutil, sys
def walk(name):
    package = importlib.import_module(name)
    for info in pkgutil.iter_modules(package.__path__):
        if info.name != "__main__":
            module = importlib.import_module(f"{name}.{info.name}")
            print(module.__name__, module.__file__)
            if info.ispkg:
                walk(module.__name__)
for root in ("neuroread", "neuroread.node", "neuroread.models", "neuroread.training"):
    print(root, importlib.import_module(root).__file__)
    walk(root)
for bare in ("node", "models", "training"):
    try:
        importlib.import_module(bare)
    except ModuleNotFoundError:
        continue
    sys.exit(f"a bare {bare!r} is importable: " + str(importlib.import_module(bare).__path__))
"""


@pytest.mark.parametrize("install", ["editable", "wheel"])
def test_every_module_imports_in_a_fresh_interpreter(install, site, tmp_path):
    """From a folder outside the checkout: the editable install (its finder maps the namespace to
    the checkout's folders) and the unpacked wheel (on PYTHONPATH, ahead of the editable one)."""
    env = {"PATH": "/usr/bin:/bin", **({"PYTHONPATH": str(site)} if install == "wheel" else {})}
    done = subprocess.run([sys.executable, "-c", _IMPORT_ALL], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    modules = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert len(modules) > 100 and "neuroread.node.app.job" in modules and "neuroread.models.volume" in modules
    where = site if install == "wheel" else REPO
    assert all(Path(f).is_relative_to(where) for f in modules.values()), where


def _project_files() -> list[Path]:
    return sorted(f for folder in SOURCES for f in (REPO / folder).rglob("*.py") if "__pycache__" not in f.parts)


def test_no_module_of_the_project_imports_node_models_or_training_by_their_bare_names():
    found = []
    for path in _project_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and not node.level and node.module else [])
            found += [f"{path.relative_to(REPO)}:{node.lineno}: {n}" for n in names if n.split(".")[0] in BARE]
    assert not found, "\n".join(found)
    assert len(_project_files()) > 150


def test_python_dash_m_neuroread_runs_the_cli(tmp_path):
    done = subprocess.run([sys.executable, "-m", "neuroread", "--help"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "serve" in done.stdout and "train-demo" in done.stdout


def _lint(site: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("lint-imports")), str(REPO / "pyproject.toml"),
                           "--no-cache"], cwd=cwd, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site)},
                          capture_output=True, text=True, timeout=300)


def test_the_import_contracts_hold_and_a_breach_fails_them(site, tmp_path):
    kept = _lint(site, tmp_path)
    assert kept.returncode == 0, kept.stdout[-3000:] + kept.stderr[-2000:]
    assert "13 kept, 0 broken" in kept.stdout, kept.stdout[-2000:]
    breaches = {
        "neuroread/node/spool/store.py": ("import neuroread.node.deliver\n", "the node's stages in flow order"),
        "neuroread/models/spec.py": ("import neuroread.node\n", "composition root above node and training"),
        "neuroread/training/folds.py": ("import neuroread.node.config\n", "composition root above node and training"),
        "neuroread/node/deliver/outbox.py": ("from neuroread.node.spool.store import Spool\n",
                                             "spool: other packages import its package, not its modules"),
    }
    for rel, (line, contract) in breaches.items():
        broken = tmp_path / "broken"
        shutil.rmtree(broken, ignore_errors=True)
        shutil.copytree(site, broken)
        target = broken / rel
        target.write_text(target.read_text() + "\n" + line)
        res = _lint(broken, tmp_path)
        assert res.returncode == 1, f"{rel}: {line!r} was not caught\n{res.stdout[-2000:]}"
        assert contract in " ".join(res.stdout.split("Broken contracts")[-1].split()), res.stdout[-2000:]
