"""``run --engine ray`` on real Ray clusters: the same table as in process (a bad and a long recording among
good ones), work on both nodes of a two-node cluster, a scoring actor killed mid-run, the CLI's own local
Ray started and stopped (Ctrl-C too, then resumed) with no process left behind, unreachable clusters."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from csfm_edge.errors import BackendUnavailableError, ClusterError
from csfm_edge.recordings.batch import BatchRequest, BatchSummary, errors_path, parts_folder, run_batch
from csfm_edge.runtime.backends import BackendOptions

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'csfm-edge[ray]'")

from csfm_edge.recordings.ray_engine import RayOptions, run_ray_batch, runtime_env  # noqa: E402

HOP_S = 60.0  # one window a minute: the long recordings stay quick
SHORT = ("E07500", "E07501", "HR06000", "JS20010", "JS20011", "E07502")


def _folder(tmp_path: Path, data_dir: Path, copies: int = 1) -> Path:
    folder = tmp_path / "archive"
    folder.mkdir()
    for copy in range(copies):
        for name in SHORT:
            shutil.copyfile(data_dir / f"{name}.npz", folder / f"{name}-{copy}.npz")
    return folder


def _cli(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "csfm_edge", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, **kwargs)


def _same_table(expected: Path, got: Path) -> None:
    """Equal schema and metadata, rows in the same order, equal provenance and flags; features within 1e-5."""
    a, b = pq.read_table(expected), pq.read_table(got)
    assert a.schema.equals(b.schema, check_metadata=True) and a.num_rows == b.num_rows
    for name in a.column_names:
        if name in ("features", "logits"):
            np.testing.assert_allclose(np.stack(b.column(name).to_numpy(zero_copy_only=False)),
                                       np.stack(a.column(name).to_numpy(zero_copy_only=False)), atol=1e-5)
        else:
            assert a.column(name).to_pylist() == b.column(name).to_pylist(), name


def _processes() -> dict[int, tuple[int, str]]:
    """Every process: pid -> (parent pid, command line)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        found[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmdline)
    return found


def _descendants(roots: list[int]) -> dict[int, str]:
    table = _processes()
    found, todo = {}, list(roots)
    while todo:
        parent = todo.pop()
        for pid, (ppid, cmdline) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = cmdline
                todo.append(pid)
    return found


def _marked(marker: str) -> list[int]:
    """Processes whose environment carries ``marker`` (everything a CLI run started inherits it)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return found


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes on this machine (one CPU each), shared by the tests that need no Ray start of their own."""
    from ray.cluster_utils import Cluster

    if not Path("/proc").is_dir():
        pytest.skip("the process checks read /proc (Linux)")
    temp = tempfile.mkdtemp(prefix="cr", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    (Path(temp) / "ray").mkdir()
    before = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp  # the cluster's address file too: not /tmp/ray, which other Rays share
    try:
        nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "temp_dir": f"{temp}/ray",
                                                              "include_dashboard": False})
        nodes.add_node(num_cpus=1)
        ray.init(address=nodes.address, runtime_env=runtime_env())
        yield nodes
        ray.shutdown()
        nodes.shutdown()
    finally:
        os.environ.pop("RAY_TMPDIR") if before is None else os.environ.update(RAY_TMPDIR=before)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def archive(tmp_path_factory, tiny_artifacts, data_dir) -> tuple[Path, Path, BatchSummary]:
    """51 recordings: 48 short 12-lead ones (enough that the later of two actors gets work too), a bedside one
    (II, an unnamed V that is dropped, PPG at 250 Hz), a 31-min one (scored in segments, read again by its
    actor) and a truncated file; with the in-process table of them (one window a minute) and its summary."""
    folder = _folder(tmp_path_factory.mktemp("ray"), data_dir, copies=8)
    shutil.copyfile(data_dir / "a103l.npz", folder / "a103l.npz")
    (folder / "broken.npz").write_bytes((data_dir / "E07503.npz").read_bytes()[:3000])
    with np.load(data_dir / "a103l.npz") as record:
        bedside = record["signal"][[0, 2]]
    np.savez(folder / "holter.npz", signal=np.tile(bedside, 6)[:, : 31 * 60 * 250], fs=250.0, leads=["II", "PLETH"])
    table = folder.parent / "process.parquet"
    summary = run_batch(BatchRequest(tiny_artifacts["int8"], [folder], out=table, hop_s=HOP_S, progress=False))
    assert (summary.records, summary.scored, summary.exit_status) == (51, 50, 2)
    return folder, table, summary


@pytest.mark.slow
def test_ray_table_equals_in_process_table_on_two_nodes(cluster, archive, tiny_artifacts, tmp_path):
    """The same table, errors file, summary and exit status as in process, with work on both nodes."""
    folder, process, expected = archive
    engine = tmp_path / "ray.parquet"
    got = run_ray_batch(BatchRequest(tiny_artifacts["int8"], [folder], out=engine, hop_s=HOP_S, progress=False),
                        RayOptions(workers=2))
    assert (got.records, got.scored, got.windows, got.exit_status) == (51, 50, expected.windows, 2)
    assert got.failed == expected.failed and "broken.npz" in got.failed[0]["path"]
    assert errors_path(engine).read_text() == errors_path(process).read_text()
    _same_table(process, engine)
    assert not parts_folder(engine).exists()
    assert len(got.nodes) == 2, f"work landed on {got.nodes} only"


@pytest.mark.slow
def test_a_killed_scoring_actor_is_retried_nothing_lost_or_twice(cluster, archive, tiny_artifacts, tmp_path):
    folder, process, expected = archive
    out = tmp_path / "ray.parquet"
    outcome: dict = {}

    def score() -> None:
        try:
            outcome["summary"] = run_ray_batch(BatchRequest(tiny_artifacts["int8"], [folder], out=out, hop_s=HOP_S,
                                                            progress=False), RayOptions(workers=2))
        except BaseException as exc:  # noqa: BLE001 (reported by the assertion below)
            outcome["error"] = exc

    runner = threading.Thread(target=score)
    runner.start()
    raylets = [node.all_processes["raylet"][0].process.pid for node in [cluster.head_node, *cluster.worker_nodes]]
    parts, killed, written = parts_folder(out), None, 0
    deadline = time.monotonic() + 300
    while killed is None and runner.is_alive() and time.monotonic() < deadline:
        written = len(list(parts.glob("*.parquet"))) if parts.exists() else 0
        actors = [pid for pid, cmdline in _descendants(raylets).items() if "_Scorer" in cmdline]
        if written >= 4 and actors:
            killed = actors[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    runner.join(300)
    assert "error" not in outcome, outcome.get("error")
    assert killed is not None and written < 50, "the actor was not killed mid-run"
    assert (outcome["summary"].scored, outcome["summary"].failed) == (50, expected.failed)
    _same_table(process, out)  # every record's windows once, in order: none lost, none twice


def test_what_the_cluster_cannot_do_is_refused_in_one_line(cluster, tiny_artifacts, tmp_path, data_dir):
    """A pool larger than the cluster, before any work; a provider the actors' node lacks, raised by the driver
    as the actor's own error (not Ray's tracebacks), leaving no parts folder behind."""
    folder = _folder(tmp_path, data_dir)
    with pytest.raises(ClusterError, match="GPUs; the Ray cluster has 0"):
        run_ray_batch(BatchRequest(tiny_artifacts["int8"], [folder], progress=False), RayOptions(gpus_per_worker=0.5))
    with pytest.raises(ClusterError, match="pass fewer --workers"):
        run_ray_batch(BatchRequest(tiny_artifacts["int8"], [folder], progress=False), RayOptions(workers=8))
    out = tmp_path / "scores.parquet"
    with pytest.raises(BackendUnavailableError, match="'tensorrt' is not available here"):
        run_ray_batch(BatchRequest(tiny_artifacts["int8"], [folder], out=out,
                                   options=BackendOptions(provider="tensorrt"), progress=False), RayOptions())
    assert not parts_folder(out).exists() and not out.exists()


def test_an_unreachable_cluster_is_one_line(tiny_artifacts, tmp_path, data_dir):
    folder = _folder(tmp_path, data_dir)
    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    done = _cli("run", str(tiny_artifacts["int8"]), str(folder), "--engine", "ray",
                "--ray-address", f"127.0.0.1:{port}")
    _, stderr = done.communicate(timeout=120)
    assert done.returncode == 1 and "cannot reach the Ray cluster at 127.0.0.1" in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    misuse = _cli("run", str(tiny_artifacts["int8"]), str(folder), "--gpus-per-worker", "1")
    assert misuse.wait(60) == 1 and "--engine ray" in misuse.stderr.read()


@pytest.mark.slow
def test_cli_local_ray_started_stopped_interrupted_resumed_into_a_dataset(archive, tiny_artifacts, tmp_path):
    """The CLI's own local Ray: Ctrl-C mid-run leaves no Ray process, --resume completes a dataset folder
    equal to the in-process table, and again no process is left."""
    folder, process, expected = archive
    out = tmp_path / "scores"  # no suffix: a dataset folder
    marker = uuid.uuid4().hex
    env = {**os.environ, "CSFM_TEST_RUN": marker}  # inherited by every process the run starts
    args = ("run", str(tiny_artifacts["int8"]), str(folder), "--out", str(out), "--hop", str(HOP_S),
            "--engine", "ray", "--workers", "2")
    first = _cli(*args, env=env)
    parts = parts_folder(out)
    deadline = time.monotonic() + 300
    while first.poll() is None and time.monotonic() < deadline and len(list(parts.glob("*.parquet"))) < 3:
        time.sleep(0.1)
    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 130, stderr
    time.sleep(1)
    assert not _marked(marker), "Ray processes outlived an interrupted run"
    assert parts.exists() and not out.exists()
    resumed = _cli(*args, "--resume", env=env)
    stdout, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 2, stderr
    scored, earlier = (int(n) for n in re.search(r"(\d+) of 51 recordings scored.*; (\d+) already scored",
                                                   stdout).groups())
    assert earlier >= 3 and scored + earlier == 50, stdout
    time.sleep(1)
    assert not _marked(marker), "Ray processes outlived the run"
    assert errors_path(out).read_text() == errors_path(process).read_text() and not parts.exists()
    _same_table(process, out)
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet"]
