"""A ward of real pylsl outlets for the live gateway test, run in its own process.

``python lsl_beds.py DATA_DIR OUT.npz SECONDS``: four beds publish real recordings in real time:
``holter`` (ECG I, II at 200 Hz, CPSC 2021), ``twelve`` (12-lead at 500 Hz, CinC 2021 records one after
another), ``bedside`` (ECG II and PLETH as two streams at 125 Hz under one source_id, 2 s of the PLETH never
sent) and ``unplugged`` (ECG I, II at 200 Hz, whose outlet is destroyed at UNPLUG_S). Nothing is sent
until every outlet has its consumer. Every sample sent and its timestamp are saved to OUT.npz at the end.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pylsl
from scipy import signal as sps

GAP_S = (16.0, 18.0)  # bedside-ppg: samples of this stretch are not sent
UNPLUG_S = 17.0
CHUNK_S = 0.05


def load(path: Path) -> tuple[np.ndarray, float, list[str]]:
    with np.load(path) as record:
        keep = record["channel_ids"] >= 0
        return record["signal"][keep].astype(np.float32), float(record["fs"]), [
            str(x) for x in np.atleast_1d(record["leads"])[keep]]


def streams(data: Path, seconds: float) -> list[dict]:
    """Stream definitions: source_id, name, type, labels, rate and the samples [n, C] to send."""
    holter = sorted(data.glob("cpsc2021_data_*.npz"))
    i_ii, fs_holter, _ = load(holter[0])
    other, _, _ = load(holter[1])
    twelve = np.concatenate([load(p)[0] for p in sorted(data.glob("E075*.npz"))[:5]], axis=1)
    bedside, fs_bedside, _ = load(data / "a103l.npz")  # II, PLETH at 250 Hz
    bedside = sps.resample_poly(bedside, 1, 2, axis=1).astype(np.float32)  # to 125 Hz
    n = lambda fs: int(seconds * fs)  # noqa: E731
    labels12 = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    return [
        dict(source="holter", name="holter-ecg", type="ECG", labels=["ECG I", "ECG II"], fs=fs_holter,
             data=i_ii[:, : n(fs_holter)].T),
        dict(source="twelve", name="twelve-ecg", type="ECG", labels=labels12, fs=500.0, data=twelve[:, : n(500)].T),
        dict(source="bedside", name="bedside-ecg", type="ECG", labels=["II"], fs=125.0,
             data=bedside[:1, : n(125)].T),
        dict(source="bedside", name="bedside-ppg", type="PPG", labels=["PLETH"], fs=125.0,
             data=bedside[1:, : n(125)].T),
        dict(source="unplugged", name="unplugged-ecg", type="ECG", labels=["I", "II"], fs=fs_holter,
             data=other[:, : n(fs_holter)].T),
    ]


def outlet(stream: dict) -> pylsl.StreamOutlet:
    info = pylsl.StreamInfo(stream["name"], stream["type"], len(stream["labels"]), stream["fs"], "float32",
                            stream["source"])
    channels = info.desc().append_child("channels")
    for label in stream["labels"]:
        channels.append_child("channel").append_child_value("label", label)
    return pylsl.StreamOutlet(info)


def main(data: Path, out: Path, seconds: float) -> None:
    defs = streams(data, seconds)
    outlets = [outlet(s) for s in defs]
    print("ready", flush=True)
    for o in outlets:
        if not o.wait_for_consumers(60.0):
            raise SystemExit("no gateway connected within 60 s")
    start = pylsl.local_clock()
    sent = [0] * len(defs)
    stamps: list[list[np.ndarray]] = [[] for _ in defs]
    print("sending", flush=True)
    while True:
        now = pylsl.local_clock() - start
        if now >= seconds:
            break
        for k, (s, o) in enumerate(zip(defs, outlets)):
            if o is None:
                continue
            if s["source"] == "unplugged" and now >= UNPLUG_S:
                outlets[k] = None  # the outlet is destroyed: the bed's monitor is unplugged
                del o
                continue
            upto = min(max(int(now * s["fs"]), sent[k]), len(s["data"]))
            index = np.arange(sent[k], upto)
            t = index / s["fs"]
            if s["name"] == "bedside-ppg":
                index = index[(t < GAP_S[0]) | (t >= GAP_S[1])]
            if index.size:
                times = start + index / s["fs"]
                o.push_chunk(np.ascontiguousarray(s["data"][index]), times.tolist())
                stamps[k].append(times)
            sent[k] = upto
        time.sleep(CHUNK_S)
    saved = {}
    for k, s in enumerate(defs):
        times = np.concatenate(stamps[k]) if stamps[k] else np.zeros(0)
        index = np.round((times - start) * s["fs"]).astype(int)
        saved[f"{s['name']}/data"] = s["data"][index]
        saved[f"{s['name']}/time"] = times
        saved[f"{s['name']}/fs"] = s["fs"]
    np.savez(out, **saved)
    print("done", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]))
