"""NumPy preprocessing against NeuroKit2 on the real recordings, and every bad input's typed error."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import load_record

from csfm_edge.errors import (
    FlatChannelError,
    LeadError,
    NonFiniteError,
    SampleRateError,
    ShapeError,
    SignalWarning,
    TooShortError,
)
from csfm_edge.leads import resolve_leads
from csfm_edge.reference_pipeline import authors_preprocess, neurokit_ppg_order
from csfm_edge.runtime.preprocess import preprocess

RECORDS = ("E07500", "E07506", "HR06000", "HR06004", "a103l", "mitdb100_5min")


@pytest.mark.parametrize("name", RECORDS)
def test_equals_neurokit_pipeline(data_dir, name):
    signal, fs, ids = load_record(data_dir / f"{name}.npz")
    ours = preprocess(signal, fs, ids, ppg_order=neurokit_ppg_order())
    theirs = authors_preprocess(signal, fs, ids)
    assert ours.dtype == np.float32 and ours.shape == (len(ids), 2500)
    assert np.abs(ours - theirs).max() <= 1e-6


def test_short_record_is_zero_padded_like_the_authors(data_dir):
    signal, fs, ids = load_record(data_dir / "E07500.npz")
    ours = preprocess(signal[:, :2000], fs, ids)  # 4 s
    assert np.abs(ours - authors_preprocess(signal[:, :2000], fs, ids)).max() <= 1e-6
    assert np.allclose(ours[:, 1000:], ours[:, 1000:1001])  # the padded tail is one constant per lead


def test_every_ppg_channel_is_cleaned_and_order_matters(data_dir):
    signal, fs, ids = load_record(data_dir / "a103l.npz")
    ppg, ecg = signal[ids == 12][0], signal[ids == 1][0]
    ppg_first = preprocess(np.stack([ppg, ecg]), fs, ["PPG", "II"])
    ppg_last = preprocess(np.stack([ecg, ppg]), fs, ["II", "PPG"])
    assert np.array_equal(ppg_first[::-1], ppg_last)  # the PPG is cleaned wherever it stands
    order3 = preprocess(ppg, fs, "PLETH", ppg_order=3)
    order2 = preprocess(ppg, fs, "pleth", ppg_order=2)
    assert np.abs(order3 - order2).max() > 1e-3


def test_lead_names_aliases_and_ids_agree(data_dir):
    signal, fs, _ = load_record(data_dir / "mitdb100_5min.npz")
    by_name = preprocess(signal, fs, ["MLII", "v5"])
    assert np.array_equal(by_name, preprocess(signal, fs, [1, 10]))
    assert resolve_leads("ii+ppg").tolist() == [1, 12]


def test_windows_are_deterministic(data_dir):
    signal, fs, ids = load_record(data_dir / "a103l.npz")
    start, center, end = (preprocess(signal, fs, ids, window=w) for w in ("start", "center", "end"))
    assert not np.allclose(start, center) and not np.allclose(center, end)
    assert np.array_equal(end, preprocess(signal, fs, ids, window="end"))


def test_short_nan_gap_is_interpolated_and_reported(data_dir):
    signal, fs, ids = load_record(data_dir / "E07500.npz")
    holed = signal.copy()
    holed[3, 1000:1040] = np.nan  # aVR, 80 ms at 500 Hz
    with pytest.warns(SignalWarning, match=r"aVR: 0\.080 s at 2\.000 s"):
        out = preprocess(holed, fs, ids)
    assert np.isfinite(out).all()
    assert np.abs(out[[0, 1, 2, 4]] - preprocess(signal, fs, ids)[[0, 1, 2, 4]]).max() == 0


def test_long_gap_is_refused_with_position(data_dir):
    signal, fs, ids = load_record(data_dir / "E07500.npz")
    holed = signal.copy()
    holed[6, 2500:2600] = np.inf  # 200 ms
    with pytest.raises(NonFiniteError, match=r"channel V1: .*0\.200 s .*at 5\.000 s"):
        preprocess(holed, fs, ids)
    holed[6] = np.nan
    with pytest.raises(NonFiniteError, match="every sample"):
        preprocess(holed, fs, ids)
    holed[6, :] = signal[6]
    holed[6, 2500:2600] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SignalWarning)
        assert preprocess(holed, fs, ids, max_gap_s=0.25).shape == (12, 2500)


def test_flat_channel_is_reported(data_dir):
    signal, fs, ids = load_record(data_dir / "E07500.npz")
    flat = signal.copy()
    flat[4] = 0.37
    with pytest.raises(FlatChannelError, match="channel aVL: flat"):
        preprocess(flat, fs, ids)


@pytest.mark.parametrize(
    ("signal", "fs", "leads", "error", "message"),
    [
        (np.zeros((2, 3, 500)), 250, ["I", "II"], ShapeError, "rank 3"),
        (np.ones((2, 500)), 250, ["I"], ShapeError, "2 rows for 1 leads"),
        (np.ones((500, 2)), 250, ["I", "II"], ShapeError, "transpose"),
        (np.ones((1, 100)), 250, ["I"], TooShortError, "minimum 1 s"),
        (np.ones((1, 500)), 0, ["I"], SampleRateError, "> 0 Hz"),
        (np.ones((1, 500)), float("nan"), ["I"], SampleRateError, "finite"),
        (np.ones((1, 500)), "fast", ["I"], SampleRateError, "a number"),
        (np.ones((1, 500)), 250, ["V7"], LeadError, "unknown lead 'V7'"),
        (np.ones((2, 500)), 250, ["II", "mlii"], LeadError, "duplicate lead II"),
        (np.ones((1, 500)), 250, [13], LeadError, "outside"),
        (np.array([["a"] * 500]), 250, ["I"], Exception, "numeric"),
    ],
)
def test_bad_input_gets_its_error(signal, fs, leads, error, message):
    with pytest.raises(error, match=message):
        preprocess(signal, fs, leads)
