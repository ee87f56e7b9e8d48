"""A ready Orthanc configuration that runs neuroread as a plugin (``neuroread orthanc-config``).

The hand-written sample is ``orthanc/orthanc.json``; this module writes the same settings with
this checkout's own paths filled in (the plugin script, the environment's site-packages, the
plugin's Python path), so a new user can start ``Orthanc <file>`` right away.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]  # the checkout: node/tools/ → ..
PLUGINS = Path("/usr/share/orthanc/plugins")


def site_packages() -> Path:
    """This environment's site-packages (the plugin's embedded Python imports from it)."""
    found = sorted(Path(sys.prefix).glob(f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"))
    if not found:
        raise FileNotFoundError(f"no site-packages under {sys.prefix}: run neuroread from its environment (.venv)")
    return found[0]


def orthanc_configuration(storage: Path, *, node_config: Path | None = None, http_port: int = 8042,
                          dicom_port: int = 4242, aet: str = "ORTHANC", users: dict[str, str] | None = None,
                          stable_age: int = 30, forward_modalities: tuple[str, ...] = (),
                          plugins: Path = PLUGINS) -> dict[str, Any]:
    """Orthanc's configuration (as JSON data) with the DICOMweb and Python plugins and the
    ``NeuroRead`` section; Orthanc's files go to ``storage/orthanc-db``. ``users`` empty: no
    HTTP authentication and loopback only (``RemoteAccessAllowed`` false)."""
    for name in ("libOrthancPython.so", "libOrthancDicomWeb.so"):
        if not (plugins / name).exists():
            raise FileNotFoundError(f"{plugins / name} is missing: install Debian's orthanc-python and "
                                    "orthanc-dicomweb (bash .ci/setup does)")
    for name, port in (("http_port", http_port), ("dicom_port", dicom_port)):
        if not 0 < port < 65536:
            raise ValueError(f"{name} must be 1-65535, got {port}")
    storage = Path(storage).resolve()
    neuroread: dict[str, Any] = {
        "PythonPath": [str(site_packages())],  # neuroread is installed there (editable: its .pth)
        "StoreResults": True,
        "ForwardToModalities": list(forward_modalities),
        "ForwardToDicomWebServers": [],
        "StartAt": "last",
        "PollSeconds": 5,
    }
    if node_config is not None:
        neuroread["Config"] = str(Path(node_config).resolve())
    return {
        "Name": "neuroread-orthanc",
        "StorageDirectory": str(storage / "orthanc-db"),
        "IndexDirectory": str(storage / "orthanc-db"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": aet,
        "RemoteAccessAllowed": bool(users),
        "AuthenticationEnabled": bool(users),
        "RegisteredUsers": dict(users or {}),
        "StableAge": stable_age,
        "Plugins": [str(plugins / "libOrthancDicomWeb.so"), str(plugins / "libOrthancPython.so")],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "PythonScript": str(REPO / "orthanc" / "neuroread_plugin.py"),
        "PythonVerbose": False,
        "NeuroRead": neuroread,
    }
