"""Resampling and windowing: the steps every dataset goes through."""

import numpy as np
import pytest

from fedhar.data.harmonise import WindowConfig, cut_windows, harmonise, label_runs, resample
from fedhar.data.labels import ACTIVITY_ID, UNLABELLED
from fedhar.data.schema import PrepareReport, Recording, WindowSet
from fedhar.errors import FedharError

WALK, SIT = ACTIVITY_ID["walking"], ACTIVITY_ID["sitting"]


def sine_recording(freq_hz, rate, seconds, label=WALK):
    t = np.arange(int(rate * seconds)) / rate
    sig = np.repeat(np.sin(2 * np.pi * freq_hz * t)[:, None], 6, axis=1)
    return Recording(sig, np.full(len(t), label), rate, subject=1, source="test")


def dominant_freq(x, rate):
    spec = np.abs(np.fft.rfft(x - x.mean()))
    return np.fft.rfftfreq(len(x), 1 / rate)[spec.argmax()]


@pytest.mark.parametrize("native", [100.0, 200.0, 150.0])
def test_resample_keeps_in_band_frequency(native):
    out = resample(sine_recording(2.0, native, 20), 50.0)
    assert out.rate == 50.0
    assert len(out.labels) == len(out.signal) == 1000
    assert dominant_freq(out.signal[:, 0], 50.0) == pytest.approx(2.0, abs=0.06)
    # amplitude is preserved in the pass band (away from the filter's edge effects)
    assert np.abs(out.signal[100:-100, 0]).max() == pytest.approx(1.0, abs=0.03)


def test_resample_removes_what_would_alias():
    # 40 Hz at 200 Hz would fold to 10 Hz if decimated naively; the filter must remove it
    rec = sine_recording(40.0, 200.0, 10)
    naive = rec.signal[::4, 0]
    assert np.abs(naive).max() > 0.5  # the trap is real
    out = resample(rec, 50.0)
    assert np.abs(out.signal[50:-50, 0]).max() < 0.01


def test_resample_carries_labels_by_nearest_sample():
    rec = sine_recording(1.0, 100.0, 4)
    rec.labels[200:] = SIT  # switch at t = 2.0 s
    out = resample(rec, 50.0)
    assert (out.labels[:100] == WALK).all() and (out.labels[100:] == SIT).all()


def test_label_runs():
    assert label_runs(np.array([1, 1, -1, 2, 2, 2])) == [(0, 2, 1), (2, 3, -1), (3, 6, 2)]
    assert label_runs(np.array([], int)) == []


def test_windows_are_pure_and_drops_are_counted():
    labels = np.array([WALK] * 300 + [UNLABELLED] * 20 + [SIT] * 100 + [SIT] * 0)
    sig = np.arange(len(labels) * 6, dtype=float).reshape(-1, 6)
    rec = Recording(sig, labels, 50.0, subject=7, source="t")
    report = PrepareReport("t")
    ws = cut_windows(rec, WindowConfig(), "t", report)
    # walking run of 300: windows start at 0, 64, 128 (3 windows), 300-256 = 44 samples left
    assert len(ws) == 3 and (ws.y == WALK).all() and (ws.subject == 7).all()
    assert ws.x.shape == (3, 6, 128) and ws.x.dtype == np.float32
    # channels-first, consecutive windows 64 samples apart
    np.testing.assert_array_equal(ws.x[1, 0, :3], sig[64:67, 0])
    np.testing.assert_array_equal(ws.x[0, :, 0], sig[0])
    assert report.dropped["unlabelled samples"] == 20
    assert report.dropped["samples in activity runs shorter than a window"] == 100
    assert report.dropped["samples at the end of a run, after its last window"] == 44


def test_harmonise_counts_and_concatenates():
    report = PrepareReport("d")
    recs = [sine_recording(2.0, 100.0, 10), sine_recording(1.0, 50.0, 10, label=SIT)]
    ws = harmonise(recs, WindowConfig(), "d", report)
    assert report.recordings == 2 and report.samples_in == 1500 and report.windows == len(ws)
    assert set(ws.class_counts()) == {"walking", "sitting"}
    assert (ws.dataset == "d").all()


def test_harmonise_rejects_rewindowing_published_windows():
    published = WindowSet(np.zeros((2, 6, 128), np.float32), np.array([WALK, SIT]),
                          np.array([1, 1]), np.array(["u", "u"]))
    assert len(harmonise([published], WindowConfig(), "u", PrepareReport("u"))) == 2
    with pytest.raises(FedharError, match="fixed windows"):
        harmonise([published], WindowConfig(step=32), "u", PrepareReport("u"))
