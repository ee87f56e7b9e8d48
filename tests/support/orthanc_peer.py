"""A real Orthanc for tests: Debian's ``Orthanc`` in a subprocess on loopback ports, with its
own storage folder, the DICOMweb plugin, and optionally the Python plugin (our
``orthanc/neuroread_plugin.py``) and ServeFolders.

    orthanc = OrthancServer(tmp_path / "orthanc")           # starts, waits for /system
    orthanc.url, orthanc.dicomweb_url, orthanc.dicom_port
    orthanc.restart(); orthanc.kill(); orthanc.stop()

Each instance writes its configuration to ``<folder>/orthanc.json`` and its log to
``<folder>/orthanc.log`` (:meth:`log` reads it, for failure messages).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import requests

from support.peers import free_port

PLUGINS = Path("/usr/share/orthanc/plugins")


class OrthancServer:
    """``Orthanc`` on ``127.0.0.1`` (HTTP and DICOM ports picked free unless given).

    ``python_script``: a script for the orthanc-python plugin (with ``extra`` holding its
    configuration section, e.g. ``{"NeuroRead": {...}}``); ``users``: HTTP basic-auth users
    (``{"name": "password"}``; none: authentication off); ``serve_folders``: URI → folder;
    ``modalities``: Orthanc's DicomModalities; ``stable_age``: seconds before a series is
    stable; ``ready_path``: a REST path that must answer 200 before the server counts as
    started (e.g. a plugin's route: the Python plugin loads after Orthanc's own REST API).
    """

    def __init__(self, folder: Path, *, python_script: Path | None = None, extra: dict[str, Any] | None = None,
                 users: dict[str, str] | None = None, serve_folders: dict[str, Path] | None = None,
                 modalities: dict[str, list] | None = None, stable_age: int = 1, aet: str = "ORTHANC",
                 ready_path: str | None = None, start_timeout: float = 90.0, start: bool = True) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port, self.aet = free_port(), free_port(), aet
        self.users = dict(users or {})
        self.ready_path, self.start_timeout = ready_path, start_timeout
        plugins = [str(PLUGINS / "libOrthancDicomWeb.so")]
        config: dict[str, Any] = {
            "Name": "neuroread-test", "DicomAet": aet,
            "StorageDirectory": str(self.folder / "db"), "IndexDirectory": str(self.folder / "db"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users), "RegisteredUsers": self.users,
            "StableAge": stable_age, "DicomModalities": modalities or {},
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
            "HttpTimeout": 60, "ConcurrentJobs": 2,
        }
        if python_script is not None:
            plugins.append(str(PLUGINS / "libOrthancPython.so"))
            config["PythonScript"] = str(python_script)
            config["PythonVerbose"] = False
        if serve_folders:
            plugins.append(str(PLUGINS / "libServeFolders.so"))
            config["ServeFolders"] = {uri: str(path) for uri, path in serve_folders.items()}
        config["Plugins"] = plugins
        config.update(extra or {})
        self.config = config
        self.config_path = self.folder / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=2))
        self.log_path = self.folder / "orthanc.log"
        self.proc: subprocess.Popen | None = None
        if start:
            self.start()

    # -- addresses ------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str] | None:
        return next(iter(self.users.items())) if self.users else None

    # -- life cycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("Orthanc is already running")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(["Orthanc", str(self.config_path)], stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        log.close()
        deadline = time.monotonic() + self.start_timeout
        paths = ["/system"] + ([self.ready_path] if self.ready_path else [])
        while paths:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"Orthanc did not answer {paths[0]} within {self.start_timeout:.0f} s:\n"
                                   f"{self.log()[-3000:]}")
            try:
                if requests.get(self.url + paths[0], auth=self.auth, timeout=2).status_code == 200:
                    paths.pop(0)
                    continue
            except requests.RequestException:
                pass
            time.sleep(0.2)

    def stop(self, timeout: float = 30.0) -> None:
        """A clean shutdown (SIGTERM, as systemd does), then SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the process group (a crash: no shutdown callbacks run)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- REST -----------------------------------------------------------------------------------------
    def get(self, path: str, **kw: Any) -> Any:
        r = requests.get(self.url + path, auth=self.auth, timeout=30, **kw)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, **kw: Any) -> requests.Response:
        return requests.post(self.url + path, auth=self.auth, timeout=60, **kw)

    def upload(self, files: list[Path]) -> list[str]:
        """POST each file to /instances; the Orthanc instance ids."""
        ids = []
        for f in files:
            r = self.post("/instances", data=Path(f).read_bytes(), headers={"Content-Type": "application/dicom"})
            r.raise_for_status()
            ids.append(r.json()["ID"])
        return ids
