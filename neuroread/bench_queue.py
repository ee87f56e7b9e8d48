"""Benchmark: the distributed queue's throughput with 1 and 2 workers, and its turnaround when
headers signal completeness vs when only the quiet period does.

    python -m neuroread.bench_queue                       # 16 series, workers 1 and 2, quiet period 10 s
    python -m neuroread.bench_queue --series 24 --workers 1 2 --quiet-s 20 --turnaround 8

Everything is real and local: Debian's ``redis-server`` and PostgreSQL (a cluster of its own in a
temporary folder; under root it runs as ``postgres``), ``neuroread serve`` with ``queue.backend:
celery`` (it receives, routes, publishes and delivers), ``neuroread worker`` processes (one pool
child each, ``torch_threads`` 1), dcmtk's ``storescp`` as the destination, dcmtk's ``storescu``
as the sender; the product head-CT model (``ct-hemorrhage``, its demo weights) on small
head-CT phantoms (``neuroread phantoms ct-hemorrhage``, made once under ``out/bench/queue``).

* **Throughput**: for each worker count, a fresh node, job store and storage; one series first
  per worker (models load), then ``--series`` series sent at once over one association; series
  per minute = series / (first instance sent → last result acknowledged by ``storescp``). The
  series carry ImagesInAcquisition, so each is routed as soon as its last instance arrives.
  Also printed: the mean inference time (job claimed → done) and how busy the machine's CPUs
  were during the run (``/proc/stat``), which say whether the model or the machine is the
  limit: a second worker can only help while CPUs are idle.
* **Turnaround**: one worker, series sent one at a time (each after the previous one's results
  arrived, so nothing queues), with ``assemble.stable_age_s`` = ``--quiet-s``: once with
  ImagesInAcquisition on every instance (the header says when the series is complete) and once
  without (only the quiet period does). Turnaround = the series' last instance received → its
  last result acknowledged; p50 and p95, beside the inference time (the target with headers:
  p95 ≤ inference + 5 s).

Not a timed test: the figures depend on the machine.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from neuroread.node.tools.dcmtk import dcmtk_tool

REPO = Path(__file__).resolve().parent.parent
AET, SCU, DEST = "NEUROREAD", "BENCHSCU", "RESULTS"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(ready: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


# -- local servers (the tests use them too: tests/support/services.py) ------------------------------
class LocalRedis:
    """``redis-server`` on 127.0.0.1 in ``folder``, with an append-only file (``appendonly yes``,
    fsync every second) so queued messages survive a restart, as a production broker's should."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server; .ci/setup does)")
        self.binary, self.folder, self.port = binary, Path(folder), _free_port()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "LocalRedis":
        import redis

        self.proc = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no",
             "--logfile", str(self.folder / "redis.log")], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                log = (self.folder / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {log}")
            try:
                return bool(redis.Redis(port=self.port, socket_connect_timeout=1).ping())
            except redis.exceptions.RedisError:
                return False
        _wait(ready, f"redis-server on port {self.port}", 20)
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # SIGTERM: redis writes its append-only file and exits
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()


class LocalPostgres:
    """A PostgreSQL cluster of its own (``initdb``) on 127.0.0.1 with trust authentication and a
    database ``neuroread`` (:attr:`url`, psycopg 3). Its folder is new, under the system's
    temporary folder (under root the server runs as ``postgres``, which must reach it), and
    removed by :meth:`close`. ``fsync`` is off: a benchmark and test server, not a store."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[4]))
        if not found:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql; .ci/setup does)")
        self.bin = Path(found[-1]).parent
        self.folder, self.port = Path(tempfile.mkdtemp(prefix="neuroread-postgres-")), _free_port()
        self.data = self.folder / "data"
        self.as_postgres = os.geteuid() == 0  # PostgreSQL refuses to run as root
        if self.as_postgres:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")

    def url_of(self, database: str = "neuroread") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def url(self) -> str:
        return self.url_of()

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.folder)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {(done.stdout + done.stderr)[-2000:]}")

    def start(self) -> "LocalPostgres":
        options = f"-h 127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "postgres.log"), "-o", options,
                  "-w", "-t", "60", "start")
        self.create_database("neuroread")
        return self

    def create_database(self, name: str) -> str:
        """Create database ``name`` if missing; its URL."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_of(name)

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server (immediately) if it runs, and remove its folder."""
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


# -- the benchmark ------------------------------------------------------------------------------------
def make_series(folder: Path, n: int) -> list[list[Path]]:
    """``n`` small head-CT phantoms (made once under ``folder``): each study's CT files."""
    if len(list(folder.glob("*/truth.json"))) < n:
        shutil.rmtree(folder, ignore_errors=True)
        print(f"making {n} small head-CT phantoms in {folder} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "neuroread.cli", "phantoms", "ct-hemorrhage", "--n", str(n), "--seed",
                        "11", "--out", str(folder), "-q"], check=True, cwd=REPO)
    studies = sorted(p.parent for p in folder.glob("*/truth.json"))[:n]
    return [sorted((s / "S01").glob("*.dcm")) for s in studies]


def fresh_copy(files: list[Path], out: Path, modify: Callable[[pydicom.Dataset], None] | None = None) -> list[Path]:
    """``files`` written under ``out`` as a new study and series (fresh UIDs), each data set
    optionally changed by ``modify`` first (the tests use it too)."""
    out.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    paths = []
    for i, path in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if modify is not None:
            modify(ds)
        paths.append(out / f"{i:03d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def with_header(count: int, header: bool) -> Callable[[pydicom.Dataset], None]:
    """ImagesInAcquisition = ``count`` on a data set (``header``), or removed: whether its headers
    say when the series is complete."""
    def modify(ds: pydicom.Dataset) -> None:
        if header:
            ds.ImagesInAcquisition = count
        elif "ImagesInAcquisition" in ds:
            del ds.ImagesInAcquisition
    return modify


class Deployment:
    """A node (celery backend) and ``workers`` worker processes over one Redis and one database."""

    def __init__(self, work: Path, redis_url: str, database: str, dest_port: int, workers: int,
                 quiet_s: float) -> None:
        import yaml

        self.work, self.database, self.port = work, database, _free_port()
        work.mkdir(parents=True)
        config = {
            "node": {"ae_title": AET, "port": self.port},
            "storage": {"root": str(work / "data")},
            "assemble": {"stable_age_s": quiet_s},
            "destinations": {"results": {"type": "dicom", "host": "127.0.0.1", "port": dest_port, "called_ae": DEST}},
            "deliver": {"interval_s": 1},
            "queue": {"backend": "celery", "broker": redis_url, "database": database, "workers": 1,
                      "torch_threads": 1, "sweep_s": 1, "lease_s": 30},
            "models": {name: {"enabled": name == "ct-hemorrhage"} for name in
                       ("ct-hemorrhage", "ms-csvd", "cmb-svd", "axspa-sij", "ad-lrp")},
        }
        self.config = work / "neuroread.yaml"
        self.config.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.procs: list[subprocess.Popen] = []
        self.logs = [work / "serve.log", *(work / f"worker{i}.log" for i in range(workers))]
        self.commands = [["serve"], *(["worker", "--name", f"w{i}@%h"] for i in range(workers))]

    def __enter__(self) -> "Deployment":
        for command, log in zip(self.commands, self.logs):
            with open(log, "wb") as out:
                self.procs.append(subprocess.Popen([sys.executable, "-m", "neuroread.cli", *command, "-c",
                                                    str(self.config)], cwd=REPO, stdout=out,
                                                   stderr=subprocess.STDOUT, start_new_session=True))
        try:
            _wait(lambda: all(" ready." in log.read_text(errors="replace") for log in self.logs[1:]), "the workers")
            _wait(lambda: subprocess.run([dcmtk_tool("echoscu"), "-aet", SCU, "-aec", AET, "127.0.0.1",
                                          str(self.port)], capture_output=True).returncode == 0, "the node")
        except RuntimeError:
            self.__exit__()
            for log in self.logs:
                print(f"--- {log.name} ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:]),
                      file=sys.stderr)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
        for proc in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)

    def send(self, series: list[list[Path]]) -> float:
        """All ``series`` over one association; the time the first instance went out."""
        started = time.time()
        files = [str(f) for s in series for f in s]
        subprocess.run([dcmtk_tool("storescu"), "-aet", SCU, "-aec", AET, "127.0.0.1", str(self.port), *files],
                       check=True, capture_output=True, env={**os.environ, "TCP_NODELAY": "1"})
        return started

    def finished(self, series_uids: list[str], timeout: float = 900.0) -> dict[str, dict[str, float]]:
        """Wait until each series' job is done and its results acknowledged; per series: the
        last instance received, the last result acknowledged, and the inference time."""
        import sqlalchemy as sa

        from neuroread.node.schema import audit_table, jobs_table, outbox_jobs_table, outbox_table, series_table

        engine = sa.create_engine(self.database)
        deadline = time.monotonic() + timeout
        try:
            while True:
                with engine.connect() as conn:
                    jobs = {next(iter(row.inputs.values())): row for row in conn.execute(sa.select(jobs_table))}
                    failed = [j for j in jobs.values() if j.state == "failed"]
                    if failed:
                        raise RuntimeError(f"job {failed[0].id} failed: {failed[0].reason}")
                    mine = [jobs.get(uid) for uid in series_uids]
                    if all(j is not None and j.state == "done" for j in mine):
                        sent = dict(conn.execute(
                            sa.select(outbox_jobs_table.c.job_id, sa.func.max(outbox_table.c.sent_at))
                            .join(outbox_table, outbox_table.c.id == outbox_jobs_table.c.item_id)
                            .where(outbox_jobs_table.c.job_id.in_([str(j.id) for j in mine]))
                            .group_by(outbox_jobs_table.c.job_id)
                            .having(sa.func.count() == sa.func.count(outbox_table.c.sent_at))).all())
                        if len(sent) == len(mine):
                            last = dict(conn.execute(sa.select(series_table.c.series_uid, series_table.c.last_received)
                                                     .where(series_table.c.series_uid.in_(series_uids))).all())
                            out = {}
                            for uid, job in zip(series_uids, mine):
                                trail = conn.execute(sa.select(audit_table.c.event, audit_table.c.at)
                                                     .where(audit_table.c.job_id == job.id)
                                                     .order_by(audit_table.c.id)).all()
                                ran = [at for event, at in trail if event == "running"][-1]
                                done = [at for event, at in trail if event == "done"][-1]
                                out[uid] = {"received": last[uid].timestamp(), "acknowledged": sent[str(job.id)],
                                            "inference": (done - ran).total_seconds()}
                            return out
                if time.monotonic() > deadline:
                    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {len(series_uids)} series")
                time.sleep(0.2)
        finally:
            engine.dispose()


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat (iowait counts as idle)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _uid(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neuroread.bench_queue", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=16, help="series per throughput run (default 16)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default 1 2)")
    parser.add_argument("--turnaround", type=int, default=6, help="series per turnaround run (default 6; 0: skip)")
    parser.add_argument("--quiet-s", type=float, default=10.0, help="assemble.stable_age_s of the turnaround runs")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench" / "queue", help="phantoms and work folders")
    args = parser.parse_args(argv)
    if args.series < 1 or min(args.workers) < 1 or args.turnaround < 0 or args.quiet_s <= 0:
        parser.error("--series and --workers must be >= 1, --turnaround >= 0, --quiet-s > 0")
    phantoms = make_series(args.out / "phantoms", max(args.series, args.turnaround) + max(args.workers))
    work = Path(tempfile.mkdtemp(prefix="run-", dir=args.out))
    redis, postgres = LocalRedis(work / "redis").start(), LocalPostgres().start()
    dest = subprocess.Popen([dcmtk_tool("storescp"), "-aet", DEST, "-od", str(work / "received"), str(port := _free_port())],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    (work / "received").mkdir()
    rates: dict[int, float] = {}
    try:
        print(f"machine: {os.cpu_count()} CPUs; model ct-hemorrhage (demo weights), small head-CT phantoms of "
              f"{len(phantoms[0])} slices; one pool child per worker, torch_threads 1", flush=True)
        for n in args.workers:
            run = work / f"throughput-{n}"
            with Deployment(run, redis.url, postgres.create_database(f"throughput{n}"), port, n, 2.0) as node:
                warm = [fresh_copy(phantoms[-1 - i], run / f"warm{i}", with_header(len(phantoms[-1 - i]), True))
                        for i in range(n)]
                node.send(warm)
                node.finished([_uid(s) for s in warm])
                batch = [fresh_copy(p, run / f"s{i:03d}", with_header(len(p), True))
                         for i, p in enumerate(phantoms[:args.series])]
                cpu0 = _cpu_ticks()
                started = node.send(batch)
                done = node.finished([_uid(s) for s in batch])
                cpu1 = _cpu_ticks()
            took = max(d["acknowledged"] for d in done.values()) - started
            rates[n] = 60 * args.series / took
            inference = statistics.mean(d["inference"] for d in done.values())
            busy = (cpu1[0] - cpu0[0]) / max(cpu1[1] - cpu0[1], 1)
            print(f"throughput, {n} worker{'s' if n > 1 else ''}: {args.series} series in {took:.1f} s = "
                  f"{rates[n]:.1f} series/min (mean inference {inference:.2f} s per series; the machine's "
                  f"{os.cpu_count()} CPUs {100 * busy:.0f} % busy)", flush=True)
        if 1 in rates:
            for n, rate in rates.items():
                if n > 1:
                    print(f"ratio {n} workers / 1 worker: {rate / rates[1]:.2f}x", flush=True)
        for header in (True, False) if args.turnaround else ():
            mode = "headers (ImagesInAcquisition)" if header else f"quiet period only ({args.quiet_s:g} s)"
            run = work / f"turnaround-{'header' if header else 'quiet'}"
            with Deployment(run, redis.url, postgres.create_database(f"turnaround{int(header)}"), port, 1,
                            args.quiet_s) as node:
                warm = fresh_copy(phantoms[-1], run / "warm", with_header(len(phantoms[-1]), True))
                node.send([warm])
                node.finished([_uid(warm)])
                rows = []
                for i, p in enumerate(phantoms[:args.turnaround]):
                    series = fresh_copy(p, run / f"s{i:03d}", with_header(len(p), header))
                    node.send([series])
                    rows.append(node.finished([_uid(series)])[_uid(series)])
            turn = [r["acknowledged"] - r["received"] for r in rows]
            inference = statistics.mean(r["inference"] for r in rows)
            print(f"turnaround, {mode}: p50 {statistics.median(turn):.1f} s, p95 {_p95(turn):.1f} s "
                  f"(inference {inference:.2f} s; {len(rows)} series one at a time)", flush=True)
    finally:
        dest.terminate()
        dest.wait(10)
        redis.stop()
        postgres.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
