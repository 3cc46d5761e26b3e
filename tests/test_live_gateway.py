"""``csfm-edge gateway --lsl`` against real pylsl outlets in another process: every bed's windows equal to
Session.embed on what that bed sent, an unplugged bed stopping alone, latency under the hop, metrics live."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pylsl")
pytest.importorskip("prometheus_client")
pq = pytest.importorskip("pyarrow.parquet")

from test_gateway import MIN_COSINE, cosine  # noqa: E402

from csfm_edge.runtime import Session  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEND_S = 34.0
HOP_S = 2.0
# Streams of each bed (as tests/lsl_beds.py names them) and the CSFM leads their labels map to.
BEDS = {"holter": [("holter-ecg", ["I", "II"])], "twelve": [("twelve-ecg", ["I", "II", "III", "aVR", "aVL", "aVF",
                                                                          "V1", "V2", "V3", "V4", "V5", "V6"])],
        "bedside": [("bedside-ecg", ["II"]), ("bedside-ppg", ["PPG"])], "unplugged": [("unplugged-ecg", ["I", "II"])]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sent_signal(sent, bed: str, origin: float, until: float) -> tuple[np.ndarray, float, list[str]]:
    """What ``bed`` sent from ``origin`` to ``until`` (its LSL clock), on its sample grid, NaN where nothing
    was sent."""
    rows, leads, rate = [], [], None
    for name, names in BEDS[bed]:
        fs = float(sent[f"{name}/fs"])
        rate = fs if rate is None else rate
        assert fs == rate  # this ward's two-stream bed sends both at 125 Hz
        index = np.round((sent[f"{name}/time"] - origin) * fs).astype(int)
        keep = (index >= 0) & (index < int(round((until - origin) * fs)))
        grid = np.full((len(names), int(round((until - origin) * fs))), np.nan)
        grid[:, index[keep]] = sent[f"{name}/data"][keep].T
        rows.append(grid)
        leads += names
    return np.concatenate(rows), rate, leads


@pytest.mark.slow
def test_gateway_serves_a_live_lsl_ward(tiny_artifacts, data_dir, tmp_path):
    artifact = tiny_artifacts["int8"]  # the fastest CPU path (OpenVINO where installed): 12-lead Tiny is heavy
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sent_path, ward = tmp_path / "sent.npz", tmp_path / "ward.parquet"
    sender = subprocess.Popen([sys.executable, str(ROOT / "tests" / "lsl_beds.py"), str(data_dir), str(sent_path),
                               str(SEND_S)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    port = free_port()
    log = tmp_path / "gateway.log"
    try:
        assert sender.stdout.readline().strip() == "ready"
        gateway = subprocess.Popen([sys.executable, "-m", "csfm_edge", "gateway", str(artifact), "--lsl",
                                    "--duration", str(SEND_S + 4), "--out", str(ward), "--metrics-port", str(port),
                                    "--hop", str(HOP_S)], stdout=subprocess.DEVNULL, stderr=log.open("w"),
                                   env=env)
        metrics, parts_seen = "", False
        deadline = time.monotonic() + SEND_S + 60
        while gateway.poll() is None and time.monotonic() < deadline:
            time.sleep(1.0)
            try:
                metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                continue
            parts_seen |= any((tmp_path / "ward.parquet.parts").glob("part-*.parquet"))
        assert gateway.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert sender.wait(timeout=60) == 0
    finally:
        for proc in (sender, locals().get("gateway")):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert 'csfm_edge_windows_scored_total{bed="twelve"}' in metrics
    assert "csfm_edge_latency_seconds_bucket" in metrics and "csfm_edge_batch_size_bucket" in metrics
    assert "csfm_edge_queue_depth" in metrics and 'csfm_edge_disconnects_total{bed="unplugged"} 1.0' in metrics
    assert parts_seen, "the table was not flushed while the gateway ran"
    assert "bed unplugged: lost" in log.read_text()

    check_ward(sent_path, ward, artifact)


def check_ward(sent_path: Path, ward: Path, artifact: Path) -> None:
    """Every bed's windows in the table against Session.embed on what the bed sent; the unplugged bed stopped
    alone; p99 latency under the hop."""
    sent = dict(np.load(sent_path))
    table = pq.read_table(ward)
    meta = json.loads(table.schema.metadata[b"csfm_edge"])
    assert meta["source"] == "lsl"
    rows = table.to_pylist()
    session = Session.open(artifact)
    latencies = []
    last = {}
    for bed in BEDS:
        mine = [r for r in rows if r["record"] == bed]
        scored = [r for r in mine if r["flags"] != "disconnected"]
        assert len(scored) >= (SEND_S - 12) / HOP_S if bed != "unplugged" else len(scored) >= 3, (bed, len(scored))
        assert all("late" not in r["flags"] for r in scored)
        origin = scored[0]["timestamp"] - scored[0]["start_s"]
        assert all(abs(r["timestamp"] - r["start_s"] - origin) < 1e-6 for r in scored)  # one grid, no rebuild
        signal, fs, leads = sent_signal(sent, bed, origin, max(r["timestamp"] for r in scored) + 10.0)
        reference = session.embed(signal, fs, leads, hop_s=HOP_S)
        by_start = {round(float(s), 3): (f, flags) for s, f, flags in zip(reference.start_s, reference.features,
                                                                           reference.flags)}
        for r in scored:
            features, flags = by_start[round(r["start_s"], 3)]
            assert r["flags"] == "; ".join(flags), (bed, r["start_s"])
            assert cosine(np.asarray(r["features"]), features) >= MIN_COSINE, (bed, r["start_s"])
            latencies.append(r["latency_ms"])
        last[bed] = max(r["timestamp"] for r in mine if r["timestamp"] is not None)
        if bed == "bedside":  # the PPG stream's dropout: those windows scored on II alone
            gaps = [r for r in scored if "gap:PPG" in r["flags"]]
            # 5 windows of the 2-s hop overlap the 2-s gap, 6 where the bed's grid does not start on the sender's
            # whole seconds (its second stream joined after the sending began); flags equal embed's above
            assert len(gaps) in (5, 6) and all(r["leads"] == "II" for r in gaps), [r["start_s"] for r in gaps]
    assert [r["flags"] for r in rows if r["record"] == "unplugged"][-1] == "disconnected"
    assert all(last[bed] > last["unplugged"] + 5 for bed in ("holter", "twelve", "bedside")), last
    assert np.percentile(latencies, 99) < HOP_S * 1e3, np.percentile(latencies, 99)


@pytest.mark.slow
def test_a_stream_joining_its_bed_later_starts_the_new_grid_without_a_gap(tiny_artifacts, data_dir):
    """A bed's ECG outlet sends alone for 3 s, then its PPG outlet appears: the bed is rebuilt with both, from
    the latest first sample among them (the PPG's backlog since it was opened must not leave II missing at
    the new grid's start, nor II's leave the PPG missing): every window scored on II + PPG without a gap."""
    import pylsl

    from csfm_edge.live.lsl import LslBeds
    from csfm_edge.runtime.gateway import Gateway

    with np.load(data_dir / "a103l.npz") as record:
        signal = record["signal"][:2, ::2].astype(np.float32)  # II, PLETH at 125 Hz
    session = Session.open(tiny_artifacts["int8"])
    results = []
    gateway = Gateway(session, results.append, hop_s=1.0)
    beds = LslBeds(gateway)

    def outlet(name: str, kind: str, label: str) -> pylsl.StreamOutlet:
        info = pylsl.StreamInfo(name, kind, 1, 125.0, "float32", "joining")
        info.desc().append_child("channels").append_child("channel").append_child_value("label", label)
        return pylsl.StreamOutlet(info)

    try:
        outlets = {0: outlet("joining-ecg", "ECG", "II")}
        start, sent = pylsl.local_clock(), 0
        while (now := pylsl.local_clock() - start) < 17.0:
            if now >= 3.0 and 1 not in outlets:
                outlets[1] = outlet("joining-ppg", "PPG", "PLETH")
            upto = int(now * 125)
            for row, o in outlets.items():
                times = start + np.arange(sent, upto) / 125
                o.push_chunk(signal[row, sent:upto, None].copy(), times.tolist())
            sent = upto
            time.sleep(0.05)
    finally:
        beds.close()
        gateway.close()
    scored = [r for r in results if r.batch]
    assert scored and all(r.leads == ["II", "PPG"] and not r.flags for r in scored), \
        [(r.start_s, r.leads, r.flags) for r in results]
