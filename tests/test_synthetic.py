"""The embedded synthetic federation: physics, determinism, and the difficulty it must have."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from fedhar.data.labels import ACTIVITY_ID, UNLABELLED
from fedhar.data.loading import load
from fedhar.data.schema import STANDARD_GRAVITY
from fedhar.data.synthetic import (
    DEFAULT_ACTIVITIES,
    SyntheticConfig,
    domain_summary,
    generate_recordings,
)
from fedhar.errors import FedharError

STATIC = ("sitting", "standing", "lying")


@pytest.fixture(scope="module")
def default_run():
    """The default federation's recordings, and the seconds it took to generate them."""
    t0 = time.perf_counter()
    recordings = list(generate_recordings(SyntheticConfig()))
    return recordings, time.perf_counter() - t0


@pytest.fixture(scope="module")
def default_windows():
    prepared = load("synthetic", synthetic=SyntheticConfig(), cache=False)
    return prepared


def small(**kw) -> SyntheticConfig:
    return SyntheticConfig(**{"seconds_per_activity": 4.0, "subjects_per_domain": 2, **kw})


def all_arrays(cfg):
    return [
        (name, r.signal, r.labels, r.rate, r.subject)
        for name, recs in generate_recordings(cfg)
        for r in recs
    ]


# ---------------------------------------------------------------- config and determinism


def test_same_seed_gives_identical_arrays_and_another_seed_does_not():
    a, b, c = all_arrays(small()), all_arrays(small()), all_arrays(small(seed=1))
    for (na, sa, la, ra, ua), (nb, sb, lb, rb, ub) in zip(a, b):
        assert (na, ra, ua) == (nb, rb, ub)
        np.testing.assert_array_equal(sa, sb)
        np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(a[0][1][:100], c[0][1][:100])


def test_adding_domains_or_subjects_keeps_the_existing_ones():
    base = all_arrays(small(n_domains=2))
    more = all_arrays(small(n_domains=3, subjects_per_domain=3))
    more_by_key = {(n, u): s for n, s, _, _, u in more}
    assert len(more) == 9
    for name, signal, _, _, subject in base:
        np.testing.assert_array_equal(more_by_key[(name, subject)], signal)


def test_config_validates_and_serialises():
    cfg = SyntheticConfig(activities=["walking", "lying"], rates=[64, 128])
    assert cfg.activities == ("walking", "lying") and cfg.rates == (64.0, 128.0)
    hash(cfg)  # frozen and hashable, lists were turned into tuples
    assert json.loads(json.dumps(cfg.as_dict()))["activities"] == ["walking", "lying"]
    with pytest.raises(FedharError, match="ironing"):
        SyntheticConfig(activities=("walking", "ironing"))
    with pytest.raises(FedharError):
        SyntheticConfig(activities=("walking", "walking"))
    with pytest.raises(FedharError):
        SyntheticConfig(seed=-1)
    with pytest.raises(FedharError):
        SyntheticConfig(rates=(10.0,))


# ---------------------------------------------------------------- layout of what is generated


def test_domains_subjects_rates_and_labels(default_run):
    default_recordings, _ = default_run
    names = [name for name, _ in default_recordings]
    assert names == ["synthetic-d0", "synthetic-d1", "synthetic-d2"]
    assert [recs[0].rate for _, recs in default_recordings] == [50.0, 100.0, 200.0]
    wanted = {ACTIVITY_ID[a] for a in DEFAULT_ACTIVITIES}
    for _, recs in default_recordings:
        assert [r.subject for r in recs] == [1, 2, 3, 4, 5, 6]
        for r in recs:
            assert r.signal.dtype == np.float64 and np.isfinite(r.signal).all()
            assert set(np.unique(r.labels)) == wanted | {UNLABELLED}
            # each activity is one run of 0.8-1.2 x 30 s; runs are separated by a transition
            runs = np.flatnonzero(np.diff(r.labels)) + 1
            bounds = np.concatenate([[0], runs, [len(r.labels)]])
            run_labels = r.labels[bounds[:-1]]
            assert list(run_labels[1::2]) == [UNLABELLED] * 5
            lengths = np.diff(bounds)[::2] / r.rate
            assert ((lengths > 0.8 * 30 - 0.1) & (lengths < 1.2 * 30 + 0.1)).all()
            gaps = np.diff(bounds)[1::2] / r.rate
            assert ((gaps >= 1.4) & (gaps <= 3.1)).all()


def test_loaded_windows_are_50hz_128_samples_and_about_2400(default_windows):
    ws, report = default_windows.windows, default_windows.report
    assert ws.x.shape[1:] == (6, 128) and ws.x.dtype == np.float32
    assert 2000 <= len(ws) <= 3000
    assert ws.datasets() == ["synthetic-d0", "synthetic-d1", "synthetic-d2"]
    for name in ws.datasets():
        assert sorted(set(ws.subject[ws.dataset == name].tolist())) == [1, 2, 3, 4, 5, 6]
    assert set(ws.class_counts()) == set(DEFAULT_ACTIVITIES)
    assert min(ws.class_counts().values()) > 250  # balanced enough: ~400 each
    assert report.recordings == 18 and report.windows == len(ws)
    assert report.dropped["unlabelled samples"] > 0  # the transitions
    # a 50 Hz walking window shows ~2 steps per second: 4-6 steps in 2.56 s
    walk = ws.x[ws.y == ACTIVITY_ID["walking"]]
    mag = np.linalg.norm(walk[:, :3], axis=1)
    spec = np.abs(np.fft.rfft(mag - mag.mean(1, keepdims=True), axis=1))
    peak_hz = np.fft.rfftfreq(128, 1 / 50)[np.median(spec, 0).argmax()]
    assert 1.5 <= peak_hz <= 2.2


def test_default_set_generates_quickly(default_run):
    _, seconds = default_run
    assert seconds < 5.0  # ~0.5 s on one idle core; generous for busy CI machines


# ---------------------------------------------------------------- physics


def test_static_postures_measure_gravity_only():
    for difficulty, tol in ((0.0, 0.02), (1.0, 0.4)):
        cfg = SyntheticConfig(difficulty=difficulty, seconds_per_activity=6.0)
        for name, recs in generate_recordings(cfg):
            for r in recs:
                static = np.isin(r.labels, [ACTIVITY_ID[a] for a in STATIC])
                mag = np.linalg.norm(r.signal[static, :3], axis=1).mean()
                assert abs(mag - STANDARD_GRAVITY) < tol, (difficulty, name, r.subject, mag)
                # still body: gyro is sway plus noise and bias, far below gait rates
                assert np.abs(r.signal[static, 3:]).mean() < 0.1


def test_postures_differ_by_the_gravity_direction():
    cfg = SyntheticConfig(difficulty=0.0, n_domains=1, subjects_per_domain=1,
                          seconds_per_activity=5.0)
    (_, [r]), = list(generate_recordings(cfg))
    direction = {}
    for a in STATIC:
        g = r.signal[r.labels == ACTIVITY_ID[a], :3].mean(0)
        direction[a] = g / np.linalg.norm(g)

    def angle(u, v):
        return math.degrees(math.acos(np.clip(u @ v, -1, 1)))

    assert 20 < angle(direction["sitting"], direction["standing"]) < 30
    assert 80 < angle(direction["lying"], direction["standing"]) < 90


def test_gyroscope_is_the_rotation_that_moves_gravity():
    """Integrating the gyro turns the first gravity reading into the later ones.

    Noiseless (difficulty 0), postures only, 200 Hz: the accelerometer is gravity (plus
    0.02-0.05 m/s^2 of slow linear motion), the posture changes by up to 85 degrees in the
    transitions, and a vector fixed in the world obeys dv/dt = -omega x v in the device frame.
    """
    cfg = SyntheticConfig(activities=STATIC, difficulty=0.0, n_domains=1, subjects_per_domain=1,
                          seconds_per_activity=4.0, rates=(200.0,))
    (_, [r]), = list(generate_recordings(cfg))
    acc, gyro, dt = r.signal[:, :3], r.signal[:, 3:], 1 / r.rate
    measured = acc / np.linalg.norm(acc, axis=1, keepdims=True)
    v = measured[0].copy()
    worst = 0.0
    for n in range(1, len(acc)):
        w = -(gyro[n - 1] + gyro[n]) / 2 * dt  # rotation vector of this step
        theta = math.sqrt(w @ w)
        if theta > 0:
            k = w / theta
            c, s = math.cos(theta), math.sin(theta)
            v = v * c + np.cross(k, v) * s + k * (k @ v) * (1 - c)  # Rodrigues
        worst = max(worst, math.degrees(math.acos(min(1.0, float(v @ measured[n])))))
    total_turn = math.degrees(math.acos(np.clip(measured[0] @ measured.T, -1, 1).min()))
    assert total_turn > 45  # the check is not vacuous: gravity really moved in the device
    assert worst < 1.5


def test_gait_rotates_the_trunk_more_than_a_posture():
    cfg = SyntheticConfig(difficulty=0.0, n_domains=1, subjects_per_domain=1,
                          seconds_per_activity=5.0)
    (_, [r]), = list(generate_recordings(cfg))
    rate = {a: np.linalg.norm(r.signal[r.labels == ACTIVITY_ID[a], 3:], axis=1).mean()
            for a in DEFAULT_ACTIVITIES}
    gaits = ("walking", "upstairs", "downstairs")
    assert min(rate[a] for a in gaits) > 4 * max(rate[a] for a in STATIC)


def dominant_hz(signal: np.ndarray, rate: float, lo=1.0, hi=3.5) -> float:
    mag = np.linalg.norm(signal[:, :3], axis=1)
    spec = np.abs(np.fft.rfft(mag - mag.mean()))
    freqs = np.fft.rfftfreq(len(mag), 1 / rate)
    band = (freqs >= lo) & (freqs <= hi)
    return float(freqs[band][spec[band].argmax()])


def test_cadence_is_per_activity_and_per_subject():
    cfg = SyntheticConfig(activities=("walking", "upstairs", "running"), n_domains=1,
                          subjects_per_domain=8, rates=(100.0,), seconds_per_activity=20.0)
    (_, recs), = list(generate_recordings(cfg))
    cad = {a: [] for a in cfg.activities}
    for r in recs:
        for a in cfg.activities:
            cad[a].append(dominant_hz(r.signal[r.labels == ACTIVITY_ID[a]], r.rate))
    cad = {a: np.array(v) for a, v in cad.items()}
    assert ((cad["walking"] >= 1.6) & (cad["walking"] <= 2.1)).all()
    assert ((cad["upstairs"] >= 1.25) & (cad["upstairs"] <= 1.75)).all()
    assert ((cad["running"] >= 2.4) & (cad["running"] <= 3.1)).all()
    assert np.ptp(cad["walking"]) > 0.1  # subjects walk at different cadences
    # a fast walker is a fast runner: subject cadence is one trait across gaits
    assert np.corrcoef(cad["walking"], cad["running"])[0, 1] > 0.5


# ---------------------------------------------------------------- learnability and domain shift


def features(x: np.ndarray) -> np.ndarray:
    """Per window: channel means and stds, acc-magnitude std and dominant frequency."""
    x = x.astype(np.float64)
    mag = np.linalg.norm(x[:, :3], axis=1)
    spec = np.abs(np.fft.rfft(mag - mag.mean(1, keepdims=True), axis=1))
    peak = np.fft.rfftfreq(x.shape[2], 1 / 50)[spec.argmax(1)]
    return np.column_stack([x.mean(2), x.std(2), mag.std(1), peak])


def knn_predict(f_train, y_train, f_test, k=5):
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-9
    a, b = (f_train - mu) / sd, (f_test - mu) / sd
    dist = (b * b).sum(1)[:, None] - 2 * b @ a.T + (a * a).sum(1)[None, :]
    votes = y_train[np.argsort(dist, axis=1)[:, :k]]
    return np.array([np.bincount(v).argmax() for v in votes])


def accuracy(ws, f, train, test, target=None):
    y = ws.y if target is None else target
    return float((knn_predict(f[train], y[train], f[test]) == y[test]).mean())


def test_activities_are_learnable_on_held_out_subjects(default_windows):
    ws = default_windows.windows
    f = features(ws.x)
    for name in ws.datasets():
        mine = ws.dataset == name
        acc = accuracy(ws, f, mine & (ws.subject <= 4), mine & (ws.subject > 4))
        assert acc > 0.7, (name, acc)  # chance is 1/6
    pooled = accuracy(ws, f, ws.subject <= 4, ws.subject > 4)
    assert pooled > 0.7


def test_domains_differ_and_a_model_of_one_fails_on_another(default_windows):
    ws = default_windows.windows
    f = features(ws.x)
    names = ws.datasets()
    # the same posture points gravity elsewhere in each domain's device frame
    for a in STATIC:
        g = [ws.x[(ws.dataset == n) & (ws.y == ACTIVITY_ID[a]), :3].mean((0, 2)) for n in names]
        g = [v / np.linalg.norm(v) for v in g]
        for i in range(len(g)):
            for j in range(i + 1, len(g)):
                assert math.degrees(math.acos(np.clip(g[i] @ g[j], -1, 1))) > 15, (a, i, j)
    # the domain is easy to tell from a window
    domain = np.searchsorted(names, ws.dataset)
    assert accuracy(ws, f, ws.subject <= 4, ws.subject > 4, target=domain) > 0.9
    # the federated difficulty: trained on one domain, a model is much worse on the others
    d0 = ws.dataset == names[0]
    within = accuracy(ws, f, d0 & (ws.subject <= 4), d0 & (ws.subject > 4))
    for other in names[1:]:
        across = accuracy(ws, f, d0, (ws.dataset == other) & (ws.subject > 4))
        assert across < within - 0.25, (other, across, within)


def test_difficulty_zero_removes_the_domain_shift():
    ws = load("synthetic", synthetic=SyntheticConfig(difficulty=0.0, seconds_per_activity=12.0),
              cache=False).windows
    f = features(ws.x)
    d0 = ws.dataset == "synthetic-d0"
    across = accuracy(ws, f, d0, ws.dataset != "synthetic-d0")
    assert across > 0.85


def test_domain_summary_names_rates_and_placements():
    rows = domain_summary(SyntheticConfig())
    assert [r["rate_hz"] for r in rows] == [50.0, 100.0, 200.0]
    assert all(45 <= r["placement_rotation_deg"] <= 120 for r in rows)
    rows0 = domain_summary(SyntheticConfig(difficulty=0.0))
    assert all(r["placement_rotation_deg"] == 0 and r["acc_noise_m_s2"] == 0 for r in rows0)
