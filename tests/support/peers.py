"""Real DICOM peers for tests: free loopback ports and a dcmtk storescp in a subprocess."""
from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pydicom

from neuroread.node.tools.dcmtk import dcmtk_tool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StoreSCP:
    """dcmtk storescp on a loopback port, bit-preserving (+B), one file per SOP instance."""

    def __init__(self, out: Path, port: int | None = None, aet: str = "STORESCP") -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.port, self.out = port or free_port(), out
        self.proc = subprocess.Popen(
            [dcmtk_tool("storescp"), "-aet", aet, "+B", "-od", str(out), "-ta", "5", "-ts", "10", "-td", "10", str(self.port)],
            env={**os.environ, "TCP_NODELAY": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while True:  # ready when it accepts a TCP connection (echoscu would cost a process more)
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"storescp did not start: {self.proc.stderr.read()!r}")
                time.sleep(0.05)

    def files(self) -> list[Path]:
        return sorted(p for p in self.out.iterdir() if p.is_file())

    def received(self) -> dict[str, Path]:
        return {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in self.files()}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
