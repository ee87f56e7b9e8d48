"""``kill -9`` of ``neuroread serve`` in the middle of an ingest, at seeded points, then a restart.

Each of :data:`ROUNDS` rounds sends a new series of 24-60 phantom CT instances (sizes, UIDs and
the kill point drawn from ``random.Random(f"{SEED}-{round}")``) with pynetdicom over one
association, from a thread that records every C-STORE response. The test kills the node with
SIGKILL once the sender has seen a seeded number of responses (:data:`MODES`, in turn): at
once (the next instance is then on the wire or being read), after a seeded fraction of the mean
time per instance so far (it is being read, written, synced or renamed into the spool, or its
response is on its way), or as soon as the next instance's temporary file shows in the spool
(written but not yet renamed); then restarts it and checks what the spool
promises (:mod:`neuroread.node.spool.store`): every instance the sender saw acknowledged with success is there,
readable, its data set bytes those that were sent; no file in the spool is partial; no temporary
file is left; the node answers C-ECHO. The spool holds what every round acknowledged, to the end.
"""
from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.dsutils import split_dataset

from neuroread.node.receive.dimse import StoreStatus
from neuroread.node.spool.store import TEMP_PREFIX, TEMP_SUFFIX
from support.node_process import AET, SCU_AET, ServeNode

pytestmark = pytest.mark.slow

SEED = 4099
ROUNDS = 6
MODES = ("mid-write", "fraction", "at once")  # round n kills as MODES[n % 3]
MID_WRITE_WAIT_S = 3.0         # how long "mid-write" looks for the temporary file
SERIES_SIZES = (24, 60)        # instances per round, inclusive
TRACEBACK = "Traceback (most recent call last)"


@dataclass
class Round:
    number: int
    study_uid: str
    files: dict[str, Path]                 # SOP Instance UID → the file sent, in sending order
    series_uid: str
    mode: str                              # one of MODES
    kill_after: int                        # responses seen before the kill
    delay: float                           # "fraction": then this fraction of the mean time per instance
    statuses: dict[str, int] = field(default_factory=dict)  # responses the sender saw
    started: float = 0.0                   # time.monotonic() when the first C-STORE was sent
    killed_at: str = ""                    # where the kill landed, as far as the test saw

    @property
    def acknowledged(self) -> list[str]:
        return [uid for uid, status in self.statuses.items() if status == StoreStatus.SUCCESS]

    def __str__(self) -> str:
        how = {"mid-write": "then at the next temporary file", "at once": "at once",
               "fraction": f"then {self.delay:.2f} of an instance's time"}[self.mode]
        return (f"round {self.number}: {len(self.files)} instances, kill after {self.kill_after} responses "
                f"{how} ({self.killed_at}); {len(self.acknowledged)} acknowledged")


def make_round(number: int, sources: list[Path], out: Path) -> Round:
    """A new study of one series, built from the phantom slices (cycled), all drawn from the seed."""
    rng = random.Random(f"{SEED}-{number}")
    size = rng.randint(*SERIES_SIZES)
    study, series = (generate_uid(entropy_srcs=[str(SEED), str(number), what]) for what in ("study", "series"))
    out.mkdir(parents=True)
    files = {}
    for i in range(size):
        ds = pydicom.dcmread(sources[i % len(sources)])
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = \
            generate_uid(entropy_srcs=[str(SEED), str(number), str(i)])
        ds.InstanceNumber = i + 1
        files[str(ds.SOPInstanceUID)] = out / f"{i:03d}.dcm"
        ds.save_as(files[str(ds.SOPInstanceUID)], enforce_file_format=True)
    kill_after = rng.randrange(1, size - 12)  # room for the responses that land before the kill
    return Round(number, study, files, series, MODES[number % len(MODES)], kill_after, rng.random())


class Sender(threading.Thread):
    """Sends a round's files over one association (bytes as they are in the file), recording
    each response; stops at the first instance without one (the node is gone)."""

    def __init__(self, port: int, round_: Round) -> None:
        super().__init__(name=f"sender-round-{round_.number}", daemon=True)
        self.port, self.round = port, round_
        self.responses = threading.Condition()
        self.error: BaseException | None = None

    def run(self) -> None:
        ae = AE(ae_title=SCU_AET)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        try:
            assoc = ae.associate("127.0.0.1", self.port, ae_title=AET)
            self.round.started = time.monotonic()
            for uid, path in self.round.files.items():
                if not assoc.is_established:
                    break
                rsp = assoc.send_c_store(path)
                if "Status" not in rsp:
                    break
                with self.responses:
                    self.round.statuses[uid] = int(rsp.Status)
                    self.responses.notify_all()
            if assoc.is_established:
                assoc.release()
        except (RuntimeError, OSError) as exc:  # the association gone under a call: recorded, not raised
            self.error = exc
        finally:
            with self.responses:
                self.responses.notify_all()

    def wait_responses(self, n: int, timeout: float) -> bool:
        with self.responses:
            return self.responses.wait_for(lambda: len(self.round.statuses) >= n or not self.is_alive(), timeout)


def kill_at(node: ServeNode, r: Round) -> None:
    """SIGKILL the node as ``r.mode`` says, the sender having seen ``r.kill_after`` responses."""
    if r.mode == "fraction":
        time.sleep(r.delay * (time.monotonic() - r.started) / max(len(r.statuses), 1))
    elif r.mode == "mid-write":
        folder = node.spool / r.study_uid / r.series_uid
        deadline = time.monotonic() + MID_WRITE_WAIT_S
        while time.monotonic() < deadline:
            try:
                if any(e.name.startswith(TEMP_PREFIX) for e in os.scandir(folder)):
                    node.kill9()
                    r.killed_at = "a temporary file in the spool"
                    return
            except FileNotFoundError:
                pass
        r.killed_at = f"no temporary file seen in {MID_WRITE_WAIT_S:.0f} s"
    node.kill9()
    r.killed_at = r.killed_at or f"{len(r.statuses)} responses seen"


def dataset_bytes(path: Path) -> bytes:
    """A Part 10 file's data set, as bytes (what follows its file meta)."""
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def check_spool(node: ServeNode, rounds: list[Round]) -> list[str]:
    """What the spool breaks of its promises for the rounds so far (empty: none)."""
    problems = []
    for r in rounds:
        spooled = node.spooled(r.study_uid)
        missing = [uid for uid in r.acknowledged if uid not in spooled]
        if missing:
            problems.append(f"{r}: {len(missing)} acknowledged instances not in the spool, first {missing[0]}")
        for uid, path in spooled.items():  # acknowledged or not (stored, then killed before the response)
            if uid not in r.files:
                problems.append(f"{r}: {path.name} was never sent")
                continue
            try:
                ds = pydicom.dcmread(path)
                sent = pydicom.dcmread(r.files[uid])
                if ds.PixelData != sent.PixelData or dataset_bytes(path) != dataset_bytes(r.files[uid]):
                    problems.append(f"{r}: {uid} differs from what was sent")
            except (pydicom.errors.InvalidDicomError, OSError, ValueError, AttributeError) as exc:
                problems.append(f"{r}: {uid} in the spool cannot be read: {type(exc).__name__}: {exc}")
    temporary = [p for p in node.data.rglob("*") if p.name.startswith(TEMP_PREFIX) or p.name.endswith(TEMP_SUFFIX)]
    problems += [f"temporary file left after the restart: {p.relative_to(node.data)}" for p in temporary]
    return problems


@pytest.fixture(scope="module")
def sources(phantom_sets) -> list[Path]:
    study = sorted(p.parent for p in phantom_sets["ct-hemorrhage"].glob("*/truth.json"))[0]
    return sorted((study / "S01").glob("*.dcm"))


def test_kill_9_during_ingest_keeps_every_acknowledged_instance_whole(tmp_path, sources, monkeypatch):
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)  # the files' bytes, unparsed
    node = ServeNode(tmp_path / "node", destination_port=None, peers=[SCU_AET])
    rounds: list[Round] = []
    try:
        node.start()
        for number in range(ROUNDS):
            r = make_round(number, sources, tmp_path / f"round{number}")
            rounds.append(r)
            sender = Sender(node.port, r)
            sender.start()
            assert sender.wait_responses(r.kill_after, 60), f"{r}: no responses in 60 s\n{node.log_tail()}"
            assert len(r.statuses) >= r.kill_after, f"{r}: the sender stopped early ({sender.error!r})"
            kill_at(node, r)
            sender.join(30)
            assert not sender.is_alive(), f"{r}: the sender still waits 30 s after the kill"
            assert len(r.statuses) < len(r.files), f"{r}: the transfer ended before the kill"
            assert set(r.statuses.values()) == {StoreStatus.SUCCESS}, r.statuses
            log_before = len(node.logs)

            node.start()
            assert node.echo(), node.log_tail()
            problems = check_spool(node, rounds)
            assert not problems, "\n".join(problems[:30]) + f"\n{node.log_tail()}"
            restart_log = "\n".join(p.read_text(errors="replace") for p in node.logs[log_before:])
            assert TRACEBACK not in restart_log, restart_log[-5000:]
            print(r)
        assert node.stop() == 0, node.log_tail()
    finally:
        if node.proc is not None:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(10)
        print(node.log_tail(40))
