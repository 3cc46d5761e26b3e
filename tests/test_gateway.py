"""The ward gateway: many beds on one Session, each bed's windows equal to Session.embed on what it sent,
from many producer threads, with flat leads, NaN gaps, timestamps, overload and failures."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
from conftest import load_record

from csfm_edge.errors import ParameterError, ShapeError
from csfm_edge.runtime import Session
from csfm_edge.runtime.backends import BackendOptions
from csfm_edge.runtime.gateway import Gateway, GatewayError, GatewayResult

MIN_COSINE = 0.999


@pytest.fixture(scope="module")
def session(tiny_artifacts):
    return Session.open(tiny_artifacts["fp32"], provider="cpu")


@pytest.fixture(scope="module")
def records(data_dir):
    """Real recordings at three rates, 25 s each: bedside II+PPG 250 Hz, Holter I+II 200 Hz, MLII 360 Hz."""
    holter = sorted(data_dir.glob("cpsc2021_data_*.npz"))[0]
    out = {}
    for name, path in (("bedside", data_dir / "a103l.npz"), ("holter", holter),
                       ("mitdb", data_dir / "mitdb100_5min.npz")):
        signal, fs, ids = load_record(path)
        out[name] = (signal[:, : int(25 * fs)].astype(np.float64), fs, ids)
    return out


class Collector:
    """Results by bed, and a way to wait until a bed has a number of them."""

    def __init__(self):
        self.by_bed: dict[str, list[GatewayResult]] = {}
        self.cond = threading.Condition()

    def __call__(self, result: GatewayResult) -> None:
        with self.cond:
            self.by_bed.setdefault(result.bed, []).append(result)
            self.cond.notify_all()

    def wait(self, bed: str, count: int, timeout: float = 600.0) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.by_bed.get(bed, [])) >= count, timeout), \
                f"{bed}: {len(self.by_bed.get(bed, []))} of {count} results"


def windows_due(samples: int, fs: float, hop_s: float = 1.0) -> int:
    return max(math.floor((samples / fs - 10.0) / hop_s + 1e-9) + 1, 0)


def feed(gateway: Gateway, results: Collector, bed: str, signal: np.ndarray, fs: float, chunk_s: float = 1.0) -> None:
    """Push ``signal`` in chunks, each once the windows of the previous ones have their results (no bed
    falls behind, so no window is late)."""
    step = int(round(chunk_s * fs))
    for start in range(0, signal.shape[1], step):
        gateway.push(bed, signal[:, start: start + step])
        results.wait(bed, windows_due(min(start + step, signal.shape[1]), fs))


def expected(session: Session, signal, fs, leads, hop_s: float = 1.0) -> dict[float, tuple[np.ndarray, list[str]]]:
    """Session.embed on the whole of what a bed sent: window start -> (features or None, flags), with leads
    dropped for the whole record written into each window's flags as a stream reports them."""
    result = session.embed(signal, fs, leads, hop_s=hop_s)
    whole = [d.flag for d in result.dropped]
    return {round(float(s), 3): (None if "no_signal" in f else feat, whole + f)
            for s, feat, f in zip(result.start_s, result.features, result.flags)}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


def check_bed(got: list[GatewayResult], want: dict) -> None:
    """Every window of the bed's grid scored once, as Session.embed scores it."""
    starts = [round(r.start_s, 3) for r in got]
    assert len(starts) == len(set(starts)), "a window was delivered twice"
    grid = sorted(s for s in want if float(s).is_integer())  # embed's extra last window ends the record
    assert sorted(starts) == grid
    for r in got:
        features, flags = want[round(r.start_s, 3)]
        assert r.flags == flags, (r.start_s, r.flags, flags)
        if features is None:
            assert r.features is None
        else:
            assert cosine(r.features, features) >= MIN_COSINE, r.start_s


@pytest.mark.slow
def test_beds_fed_from_many_threads_get_what_embed_gives(session, records):
    """Six beds on three records (one with a flat PPG, one with NaN gaps), each fed by its own thread: every
    window equals Session.embed's, engine calls are shared, and the bad beds leave the others alone."""
    beds = {}
    for copy in range(2):
        for name, (signal, fs, ids) in records.items():
            signal = signal.copy()
            if name == "bedside" and copy == 1:
                signal[1] = 0.0  # PPG flat throughout: lead off
            if name == "holter" and copy == 1:
                signal[0, int(12 * fs): int(15 * fs)] = np.nan  # a 3-s dropout of lead I
                signal[1, int(20 * fs): int(20.05 * fs)] = np.nan  # a 50-ms one of lead II: interpolated
            beds[f"{name}-{copy}"] = (signal, fs, ids)
    results = Collector()
    batches = []
    with Gateway(session, results, hop_s=1.0, max_batch=8, max_delay_s=0.05,
                 on_batch=lambda size, seconds: batches.append(size)) as gateway:
        for bed, (_, fs, ids) in beds.items():
            gateway.add(bed, fs, ids)
        threads = [threading.Thread(target=feed, args=(gateway, results, bed, signal, fs))
                   for bed, (signal, fs, ids) in beds.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert max(batches) > 1, "windows of different beds never shared an engine call"
    for bed, (signal, fs, ids) in beds.items():
        check_bed(results.by_bed[bed], expected(session, signal, fs, ids))
    flags = {f for r in results.by_bed["bedside-1"] for f in r.flags}
    assert flags == {"flat:PPG"}
    gaps = [r for r in results.by_bed["holter-1"] if "gap:I" in r.flags]
    assert gaps and all(r.leads == ["II"] for r in gaps)  # scored without the lead in its gap
    assert any("interpolated:II" in r.flags for r in results.by_bed["holter-1"])
    assert all(not r.flags for r in results.by_bed["mitdb-0"])


def test_a_bed_without_signal_gets_flagged_windows(session, records):
    signal, fs, ids = records["bedside"]
    dead = np.full_like(signal[:, : int(12 * fs)], np.nan)
    results = Collector()
    with Gateway(session, results) as gateway:
        gateway.add("dead", fs, ids)
        feed(gateway, results, "dead", dead, fs)
    assert [r.flags for r in results.by_bed["dead"]] == [["missing:II", "missing:PPG", "no_signal"]] * 3
    assert all(r.features is None and r.batch == 0 for r in results.by_bed["dead"])


def test_timestamps_place_samples_and_two_rates_align(session, records):
    """A bed whose II (250 Hz) and PPG (125 Hz) come as separate pushes with their own timestamps, and 2 s of
    both missing: the gap is NaN on the bed's time line, exactly as embed sees that signal."""
    signal, fs, ids = records["bedside"]
    ii, ppg = signal[0], signal[1, ::2]
    t_ii = 1000.0 + np.arange(ii.size) / fs
    t_ppg = 1000.0 + np.arange(ppg.size) / (fs / 2)
    lost_ii = (t_ii >= 1012.0) & (t_ii < 1014.0)
    lost_ppg = (t_ppg >= 1012.0) & (t_ppg < 1014.0)
    results = Collector()
    with Gateway(session, results) as gateway:
        gateway.add("bed", [fs, fs / 2], ["II", "PPG"])
        for second in range(25):
            a = (t_ii >= 1000 + second) & (t_ii < 1001 + second) & ~lost_ii
            b = (t_ppg >= 1000 + second) & (t_ppg < 1001 + second) & ~lost_ppg
            if a.any():
                gateway.push("bed", ii[a], t_ii[a], leads=["II"])
                gateway.push("bed", ppg[b], t_ppg[b], leads=["PPG"])
                results.wait("bed", windows_due(second + 1, 1.0))
    sent = [np.where(lost_ii, np.nan, ii), np.where(lost_ppg, np.nan, ppg)]
    check_bed(results.by_bed["bed"], expected(session, sent, [fs, fs / 2], ["II", "PPG"]))
    assert results.by_bed["bed"][0].timestamp == 1000.0
    assert sum("gap:II" in r.flags for r in results.by_bed["bed"]) == 11


def test_a_bed_that_falls_behind_skips_to_its_newest_window(session, records):
    """120 windows pushed at once: the ring holds only the newest, so the rest are flagged late, none is
    queued without bound, and every window is accounted for once."""
    signal, fs, ids = records["bedside"]
    long = np.tile(signal, 6)[:, : int(130 * fs)]
    results = Collector()
    with Gateway(session, results, workers=1) as gateway:
        gateway.add("fast", fs, ids)
        for start in range(0, long.shape[1], int(fs)):
            gateway.push("fast", long[:, start: start + int(fs)])
        results.wait("fast", 121)
        assert gateway.queue_depth() == 0
    got = results.by_bed["fast"]
    assert sorted(round(r.start_s) for r in got) == list(range(121))
    late = [r for r in got if r.flags == ["late"]]
    assert len(late) > 100 and all(r.features is None for r in late)
    newest = max(got, key=lambda r: r.start_s)
    assert newest.features is not None and "late" not in newest.flags


def test_a_window_that_waits_for_the_engine_longer_than_a_hop_is_skipped(session, records):
    """The engine's queue is bounded too: a prepared window still waiting after one hop when its bed's next
    window is queued gives way to it (here the engine waits 6 s to fill a batch)."""
    signal, fs, ids = records["bedside"]
    results = Collector()
    with Gateway(session, results, max_batch=64, max_delay_s=6.0) as gateway:
        gateway.add("bed", fs, ids)
        gateway.push("bed", signal[:, : int(10 * fs)])
        time.sleep(2.5)
        gateway.push("bed", signal[:, int(10 * fs): int(11 * fs)])
        results.wait("bed", 1)
        assert results.by_bed["bed"][0].flags == ["late"] and results.by_bed["bed"][0].start_s == 0.0
    assert [r.start_s for r in results.by_bed["bed"]] == [0.0, 1.0]
    assert results.by_bed["bed"][1].features is not None


def test_disconnect_drops_the_partial_window_and_starts_a_new_grid(session, records):
    signal, fs, ids = records["bedside"]
    results = Collector()
    with Gateway(session, results) as gateway:
        gateway.add("bed", fs, ids)
        gateway.add("other", fs, ids)
        feed(gateway, results, "bed", signal[:, : int(12.5 * fs)], fs)
        gateway.disconnect("bed")
        feed(gateway, results, "other", signal[:, : int(11 * fs)], fs)
        gateway.push("bed", signal[:, : int(10 * fs)])
        results.wait("bed", 5)
    flags = [r.flags for r in results.by_bed["bed"]]
    assert flags[:4] == [[], [], [], ["disconnected"]]
    assert results.by_bed["bed"][3].start_s == 12.5
    assert results.by_bed["bed"][4].start_s == 12.5  # the new grid starts where the bed came back
    assert [r.flags for r in results.by_bed["other"]] == [[], []]


def test_bad_calls_raise_and_change_nothing(session, records):
    signal, fs, ids = records["bedside"]
    with Gateway(session, lambda r: None) as gateway:
        gateway.add("bed", fs, ids)
        with pytest.raises(ParameterError, match="already"):
            gateway.add("bed", fs, ids)
        with pytest.raises(ParameterError, match="no bed"):
            gateway.push("nobody", signal)
        with pytest.raises(ShapeError, match=r"\[2, samples\]"):
            gateway.push("bed", signal.T)
        with pytest.raises(ShapeError, match="no lead V1"):
            gateway.push("bed", signal[0], leads=["V1"])
        with pytest.raises(ShapeError, match="timestamps"):
            gateway.push("bed", signal[:, :10], timestamps=np.arange(9.0))
        with pytest.raises(ParameterError):
            Gateway(session, lambda r: None, max_batch=0)


def test_a_failing_result_callback_stops_the_gateway_loudly(session, records):
    signal, fs, ids = records["bedside"]

    def broken(result):
        raise RuntimeError("display gone")

    gateway = Gateway(session, broken)
    gateway.add("bed", fs, ids)
    gateway.push("bed", signal[:, : int(11 * fs)])
    deadline = time.monotonic() + 30
    with pytest.raises(GatewayError, match="display gone"):
        while time.monotonic() < deadline:
            gateway.push("bed", signal[:, :10])
            time.sleep(0.05)
    with pytest.raises(GatewayError):
        gateway.close()


def test_each_bed_gets_its_results_in_window_order_from_two_engine_threads(tiny_artifacts, records):
    """Two OpenVINO streams give two engine threads. Windows 0-2 lack the PPG (NaN for 3 s) and windows 3-4
    have it: two lead sets, two engine calls at once. The call of windows 0-2 is held back (its ``on_batch``
    sleeps) while the other delivers, yet the bed gets window 0 first and every window equals embed's."""
    pytest.importorskip("openvino")
    session = Session.open(tiny_artifacts["fp32"], BackendOptions(provider="openvino", streams=2))
    signal, fs, ids = records["bedside"]
    signal = signal[:, : int(14 * fs)].copy()
    signal[1, : int(3 * fs)] = np.nan
    results = Collector()
    calls = []

    def hold_back_the_first_windows(size: int, seconds: float) -> None:
        calls.append(size)
        if size == 3:
            time.sleep(0.5)

    with Gateway(session, results, max_delay_s=0.3, on_batch=hold_back_the_first_windows) as gateway:
        gateway.add("bed", fs, ids)
        gateway.push("bed", signal)
        results.wait("bed", 5)
    got = results.by_bed["bed"]
    assert sorted(calls) == [2, 3]
    assert [r.start_s for r in got] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [r.leads for r in got] == [["II"]] * 3 + [["II", "PPG"]] * 2
    check_bed(got, expected(session, signal, fs, ids))


def test_a_gain_jump_is_flagged_against_the_beds_windows_so_far(session, records):
    """Lead II 1000x larger from 14 s on (mV turned into uV): the windows that reach into it are flagged
    ``amplitude:II`` while the bed's usual spread is still the old one; PPG and the windows before are not."""
    signal, fs, ids = records["bedside"]
    signal = signal.copy()
    signal[0, int(14 * fs):] *= 1000.0
    results = Collector()
    with Gateway(session, results) as gateway:
        gateway.add("bed", fs, ids)
        feed(gateway, results, "bed", signal, fs)
    flagged = [round(r.start_s) for r in results.by_bed["bed"] if "amplitude:II" in r.flags]
    assert flagged == [5, 6, 7, 8]  # from the first reaching past 14 s, until they are half the bed's windows
    assert not any("amplitude:PPG" in r.flags for r in results.by_bed["bed"])


def test_chunks_stamped_as_lsl_stamps_them_follow_on_without_gaps(session, records):
    """LSL's default: each chunk's last sample stamped at its push (up to 30 ms late), the others back-dated at
    the nominal rate, so chunks overlap or part by the jitter. The samples follow on (no gap, none dropped):
    every window equals embed on the signal as it was, unflagged where embed's is."""
    signal, fs, ids = records["bedside"]
    rng = np.random.default_rng(3)
    results = Collector()
    with Gateway(session, results) as gateway:
        gateway.add("bed", fs, ids)
        bounds = np.arange(0, signal.shape[1], int(0.05 * fs))
        for lo, hi in zip(bounds, list(bounds[1:]) + [signal.shape[1]]):
            pushed = 500.0 + hi / fs + rng.uniform(0, 0.03)
            gateway.push("bed", signal[:, lo:hi], pushed - np.arange(hi - lo)[::-1] / fs)
            results.wait("bed", windows_due(hi, fs))  # the bed keeps up: no window late
    check_bed(results.by_bed["bed"], expected(session, signal, fs, ids))


def test_closing_scores_every_window_already_due(session, records, monkeypatch):
    """``close()`` while a worker is still preparing the due windows (here each preparation takes 0.3 s):
    they are scored too, as the engine threads stop only after the preprocessing threads handed over all."""
    signal, fs, ids = records["bedside"]
    prepare = session.prepare

    def slow_prepare(*args, **kwargs):
        time.sleep(0.3)
        return prepare(*args, **kwargs)

    monkeypatch.setattr(session, "prepare", slow_prepare)
    results = Collector()
    with Gateway(session, results, workers=1) as gateway:
        gateway.add("bed", fs, ids)
        gateway.push("bed", signal[:, : int(11 * fs)])
        time.sleep(0.1)  # the worker took both windows: none waits in a queue any more
        assert gateway.queue_depth() == 0
    assert [r.start_s for r in results.by_bed["bed"]] == [0.0, 1.0]


def test_a_closed_gateway_refuses_samples_rather_than_drop_them(session, records):
    signal, fs, ids = records["bedside"]
    gateway = Gateway(session, lambda r: None)
    gateway.add("bed", fs, ids)
    gateway.close()
    gateway.close()  # twice: nothing more
    with pytest.raises(GatewayError, match="closed"):
        gateway.push("bed", signal[:, :250])
    with pytest.raises(GatewayError, match="closed"):
        gateway.add("other", fs, ids)
