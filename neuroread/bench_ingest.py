"""Benchmark: DICOM ingest of one large CT series by neuroread, Orthanc and dcmtk storescp.

    python -m neuroread.bench_ingest                    # 300 slices of 512×512, 3 rounds, 1 association
    python -m neuroread.bench_ingest --associations 1 4 # the same, then the series over 4 associations
    python -m neuroread.bench_ingest --rounds 5 --slices 300 --keep

One run measures all four receivers on the same series, the same disk and the same sender
(dcmtk ``storescu`` with ``TCP_NODELAY=1``, the series' own transfer syntax), each round in a
rotated order and each receiver into a fresh, empty folder. With ``--associations N`` the series
is cut into N consecutive parts sent at once by N ``storescu`` processes, each its own
association (as a PACS or a modality with several send queues does); every count given is run
in every round:

* **neuroread**: ``neuroread serve`` (the whole node, not only its SCP), durable spool on,
  ``node.max_associations`` at least the largest N (its default, 10, otherwise);
* **Orthanc**: Debian's ``Orthanc`` with its defaults (``SyncStorageArea`` true: fsync per file,
  SQLite index), plugins off, started with ``TCP_NODELAY=1`` like ``storescu``. Its DICOM server
  runs ``DicomThreadsCount`` operations at once (default 4; it does not limit connections): raised
  to N only for an N above 4;
* **storescp**: dcmtk ``storescp -od DIR`` (writes files, no fsync: the practical ceiling); with
  more than one association ``--fork`` (a process per association: its default, single-process
  mode, serves one association after the other);
* **pynetdicom**: pynetdicom's own server (``AE.start_server``, a thread per association) with a
  handler that only writes the received bytes durably as neuroread's spool does (temporary file,
  fsync, rename, folder fsync): what the receive stage would reach on pynetdicom's reactors (see
  neuroread.node.receive.association).

The series is a head-CT phantom from ``neuroread.training.phantoms`` with ``--slices`` thin slices of
512×512, made once (a few minutes) and kept under ``out/bench/``. Instances per second is the
number of instances over the wall time from the first ``storescu``'s start to the last one's
end (association, sending, release); every receiver's count is checked after each round. Prints
each round; then, per association count, each receiver's median with the lowest and highest
round, and the ratios ``neuroread / Orthanc``, ``neuroread / storescp`` and ``neuroread /
pynetdicom SCP`` (of the medians, with the range of the same ratio within each round). Not a
timed test: the figures depend on the machine (its cores, and its disk's fsync latency).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from neuroread.node.tools.dcmtk import DcmtkMissing, dcmtk_tool

REPO = Path(__file__).resolve().parent.parent
SENDER_ENV = {**os.environ, "TCP_NODELAY": "1"}
NEUROREAD_MAX_ASSOCIATIONS = 10  # node.max_associations' default
ORTHANC_DICOM_THREADS = 4  # Orthanc's DicomThreadsCount default (1.10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(ready: Callable[[], bool], what: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout:.0f} s")
        time.sleep(0.1)


def _echo(port: int, aet: str) -> bool:
    return subprocess.run([dcmtk_tool("echoscu"), "-aec", aet, "127.0.0.1", str(port)], env=SENDER_ENV,
                          capture_output=True).returncode == 0


def make_series(folder: Path, slices: int) -> list[Path]:
    """The benchmark series (made once, then reused): one head-CT phantom, ``slices`` slices."""
    files = sorted(folder.rglob("*.dcm")) if folder.is_dir() else []
    images = [f for f in files if f.parent.name != "masks"]
    if len(images) == slices:
        return images
    from neuroread.training.phantoms import ct_hemorrhage
    from neuroread.training.phantoms.registry import case_id, study_rng
    from neuroread.training.phantoms.writer import write_study

    print(f"making a {slices}-slice 512×512 head-CT phantom in {folder} (once; a few minutes)", flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    study = ct_hemorrhage.generate(study_rng("ct-hemorrhage", 1, 0), case_id("ct-hemorrhage", 1, 0),
                                   "hemorrhage", "full", slices=slices)
    write_study(study, folder)
    images = sorted(f for f in folder.rglob("*.dcm") if f.parent.name != "masks")
    if len(images) != slices:
        raise RuntimeError(f"expected {slices} instances in {folder}, found {len(images)}")
    return images


class Receiver(AbstractContextManager):
    """One receiver process on a free loopback port, storing into ``work``."""

    name = ""
    aet = ""

    def __init__(self, work: Path, associations: int = 1) -> None:
        if associations < 1:
            raise ValueError(f"Receiver.associations must be >= 1, got {associations!r}")
        self.work, self.port, self.associations = work.resolve(), _free_port(), associations
        self.proc: subprocess.Popen | None = None
        self.log = open(work / "receiver.log", "wb")

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def stored(self) -> int:
        raise NotImplementedError

    def __enter__(self) -> "Receiver":
        cmd, env = self.command()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.work)
        _wait(lambda: _echo(self.port, self.aet), self.name, self.proc)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Neuroread(Receiver):
    name, aet = "neuroread", "NEUROREAD"

    def command(self) -> tuple[list[str], dict[str, str]]:
        config = self.work / "neuroread.yaml"
        config.write_text(f"node: {{ae_title: {self.aet}, port: {self.port}}}\nstorage: {{root: data}}\n"
                          "assemble: {stable_age_s: 3600}\n")
        return [sys.executable, "-m", "neuroread.cli", "serve", "-c", str(config)], \
            {**os.environ, "PYTHONPATH": str(REPO)}

    def stored(self) -> int:
        return sum(1 for _ in (self.work / "data" / "spool").glob("*/*/*.dcm"))


class Orthanc(Receiver):
    name, aet = "Orthanc", "ORTHANC"

    def command(self) -> tuple[list[str], dict[str, str]]:
        self.http = _free_port()
        config = {"Name": "neuroread-bench", "StorageDirectory": str(self.work / "db"),
                  "IndexDirectory": str(self.work / "db"), "DicomAet": self.aet, "DicomPort": self.port,
                  "HttpPort": self.http, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
                  "Plugins": []}
        if self.associations > ORTHANC_DICOM_THREADS:  # its default serves 4 operations at once
            config["DicomThreadsCount"] = self.associations
        (self.work / "orthanc.json").write_text(json.dumps(config, indent=2))
        return ["Orthanc", str(self.work / "orthanc.json")], SENDER_ENV

    def stored(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/statistics", timeout=30) as r:
            return int(json.load(r)["CountInstances"])


class BarePynetdicom(Receiver):
    name, aet = "pynetdicom", "PYNETDICOM"

    def command(self) -> tuple[list[str], dict[str, str]]:
        (self.work / "in").mkdir()
        return [sys.executable, "-m", "neuroread.bench_ingest", "--bare-pynetdicom-scp", str(self.port),
                str(self.work / "in"), str(self.associations)], {**os.environ, "PYTHONPATH": str(REPO)}

    def stored(self) -> int:
        return sum(1 for f in (self.work / "in").iterdir() if f.suffix == ".dcm")


def bare_pynetdicom_scp(port: int, folder: Path, associations: int) -> None:
    """Serve until killed: pynetdicom's server, each instance written durably, nothing else."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification

    from neuroread.node.receive import TRANSFER_SYNTAXES
    from neuroread.node.spool import atomic_write

    def store(event: evt.Event) -> int:
        atomic_write(folder / f"{event.request.AffectedSOPInstanceUID}.dcm", event.encoded_dataset(), fsync=True)
        return 0x0000

    ae = AE(BarePynetdicom.aet)
    ae.maximum_pdu_size = 0
    ae.maximum_associations = max(ae.maximum_associations, associations)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, list(TRANSFER_SYNTAXES))
    ae.add_supported_context(Verification)
    ae.start_server(("127.0.0.1", port), block=True, evt_handlers=[(evt.EVT_C_STORE, store)])


class StoreSCP(Receiver):
    name, aet = "storescp", "STORESCP"

    def command(self) -> tuple[list[str], dict[str, str]]:
        (self.work / "in").mkdir()
        fork = ["--fork"] if self.associations > 1 else []  # single-process mode serves one at a time
        return [dcmtk_tool("storescp"), *fork, "-aet", self.aet, "-od", str(self.work / "in"), str(self.port)], \
            SENDER_ENV

    def stored(self) -> int:
        return sum(1 for f in (self.work / "in").iterdir() if f.is_file())


RECEIVERS: tuple[type[Receiver], ...] = (Neuroread, Orthanc, StoreSCP, BarePynetdicom)


def split(files: list[Path], parts: int) -> list[list[Path]]:
    """``files`` in ``parts`` consecutive runs as even as can be (each association sends one)."""
    if not 1 <= parts <= len(files):
        raise ValueError(f"cannot split {len(files)} instances into {parts} associations")
    return [files[i * len(files) // parts:(i + 1) * len(files) // parts] for i in range(parts)]


def send(files: list[Path], port: int, aet: str, associations: int = 1) -> float:
    """Seconds from the first ``storescu``'s start to the last one's end, ``files`` sent over
    ``associations`` concurrent associations (one ``storescu`` each; every one checked for success)."""
    with tempfile.TemporaryDirectory(prefix="storescu-") as logs:
        procs = []
        start = time.perf_counter()
        for i, part in enumerate(split(files, associations)):
            with open(Path(logs) / f"{i}.log", "wb") as log:  # a file, not a pipe: nobody reads it meanwhile
                procs.append(subprocess.Popen([dcmtk_tool("storescu"), "-aec", aet, "127.0.0.1", str(port),
                                               *map(str, part)], env=SENDER_ENV, stdout=log, stderr=log))
        codes = [proc.wait() for proc in procs]
        seconds = time.perf_counter() - start
        failed = [(i, code) for i, code in enumerate(codes) if code != 0]
        if failed:
            i, code = failed[0]
            tail = (Path(logs) / f"{i}.log").read_text(errors="replace")[-800:]
            raise RuntimeError(f"storescu {i + 1} of {associations} to {aet} failed ({code}): {tail}")
    return seconds


def _label(associations: int) -> str:
    return f"{associations} association" + ("s" if associations > 1 else "")


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):7.1f} ({min(values):.1f}-{max(values):.1f})"


def report(rates: dict[int, dict[str, list[float]]], rounds: int, instances: int) -> None:
    """Per association count: each receiver's median (lowest-highest round), then the ratios of
    the medians with the range of the same ratio within each round."""
    for associations, by_receiver in rates.items():
        print(f"\nmedian (lowest-highest) of {rounds} rounds, {instances} × 512×512 CT, "
              f"{_label(associations)}:")
        for name, values in by_receiver.items():
            print(f"  {name:10s} {_spread(values)} inst/s")
        median = {name: statistics.median(values) for name, values in by_receiver.items()}
        for other, label in (("Orthanc", "Orthanc "), ("storescp", "storescp"), ("pynetdicom", "pynetdicom SCP")):
            per_round = [a / b for a, b in zip(by_receiver["neuroread"], by_receiver[other])]
            print(f"  neuroread / {label} = {median['neuroread'] / median[other]:.2f} "
                  f"(rounds {min(per_round):.2f}-{max(per_round):.2f})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300, help="slices in the CT series (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each receiver once per round (default 3)")
    parser.add_argument("--associations", type=int, nargs="+", default=[1], metavar="N",
                        help="concurrent associations the series is split over; several counts run one "
                             "after the other in every round (default 1)")
    parser.add_argument("--series", type=Path, default=REPO / "out" / "bench", help="where the series is kept")
    parser.add_argument("--work", type=Path, default=None,
                        help="scratch folder for the receivers (default: a temporary folder beside --series, "
                             "so all write to the same disk)")
    parser.add_argument("--keep", action="store_true", help="keep the receivers' folders")
    parser.add_argument("--bare-pynetdicom-scp", nargs=3, metavar=("PORT", "DIR", "ASSOCIATIONS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare_pynetdicom_scp:  # one of the receivers, run as its own process
        port, folder, most = args.bare_pynetdicom_scp
        bare_pynetdicom_scp(int(port), Path(folder), int(most))
        return 0
    counts = list(dict.fromkeys(args.associations))  # in the order given, each once
    if any(n < 1 or n > args.slices for n in counts):
        parser.error(f"--associations must be between 1 and --slices ({args.slices}), got {args.associations}")
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    for tool in ("storescu", "storescp", "echoscu"):
        try:
            dcmtk_tool(tool)  # dcmtk's, not pynetdicom's namesake in an activated environment
        except DcmtkMissing as exc:
            parser.error(str(exc))
    if shutil.which("Orthanc") is None:
        parser.error("Orthanc not found: install Debian's orthanc (bash .ci/setup does)")
    files = make_series(args.series / f"ct-{args.slices}", args.slices)
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    args.series.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ingest-", dir=args.work or args.series))
    print(f"series: {len(files)} instances, {megabytes:.0f} MB; {os.cpu_count()} cores; "
          f"associations {', '.join(map(str, counts))}; scratch {work}")
    rates = {n: {r.name: [] for r in RECEIVERS} for n in counts}
    try:
        for round_ in range(args.rounds):
            order = RECEIVERS[round_ % len(RECEIVERS):] + RECEIVERS[:round_ % len(RECEIVERS)]
            for associations in counts:
                for kind in order:
                    folder = work / f"{kind.name}-{associations}-{round_}"
                    folder.mkdir()
                    with kind(folder, associations) as receiver:
                        seconds = send(files, receiver.port, receiver.aet, associations)
                        stored = receiver.stored()
                    if stored != len(files):
                        raise RuntimeError(f"{kind.name} stored {stored} of {len(files)} instances "
                                           f"({_label(associations)})")
                    rates[associations][kind.name].append(len(files) / seconds)
                    print(f"round {round_ + 1}, {_label(associations)}: {kind.name:10s} "
                          f"{len(files) / seconds:7.1f} inst/s ({seconds:5.2f} s, {megabytes / seconds:6.1f} MB/s)",
                          flush=True)
                    if not args.keep:
                        shutil.rmtree(folder)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report(rates, args.rounds, len(files))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
