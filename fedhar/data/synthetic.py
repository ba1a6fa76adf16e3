"""A synthetic, embedded HAR federation: runs anywhere, no download.

THIS DATA IS SYNTHETIC. It is generated from a simple physical model, not recorded. It
exists so that the whole pipeline (resampling, windowing, federated training, LoRA/QLoRA)
can be run and tested without the real datasets; numbers obtained on it say nothing about
accuracy on real people.

What it models (the things that make real HAR federations hard):
  * Each domain ("synthetic-d0", "synthetic-d1", ...) stands for one dataset: one device
    placement, one sensor, one native sampling rate (``rates`` cycled, default 50, 100,
    200 Hz, so the anti-aliased resampling path is exercised).
  * Placement: every domain has a random device-to-body rotation (45-120 degrees about a
    random axis at difficulty 1), every subject a small jitter on top (about 6 degrees).
  * Static postures differ mainly by the gravity direction in the device frame: standing
    upright, sitting leaning back about 25 degrees, lying about 85 degrees; each subject
    holds them a little differently. They carry small postural sway.
  * Dynamic activities are periodic in the step phase: trunk acceleration forward, left
    and up as harmonics of the step frequency (left-right at the stride frequency, half of
    it), trunk sway in roll/pitch/yaw, a forward lean. Cadence (steps/s): walking 1.7-2.0,
    upstairs 1.35-1.65 (slower, a double-humped vertical push-off, more lean), downstairs
    1.8-2.2 (stronger impacts: more upper harmonics), running 2.5-3.0 (about 3x the
    walking amplitude). Each subject has its own cadence (a fast walker is fast in every
    gait) and amplitude; cadence and amplitude drift slowly within a run.
  * Gyroscope consistent with the motion: it is the body-frame angular velocity of the
    very orientation that projects gravity onto the accelerometer (analytic derivatives of
    the roll/pitch/yaw tracks), so d(acc)/dt = -gyro x acc holds for a still body.
  * Sensor errors per domain (device model), at difficulty 1: white noise (acc 0.05-0.25
    m/s^2, gyro 0.005-0.03 rad/s), constant bias per axis (acc ~0.1 m/s^2, gyro ~0.01
    rad/s) and 1 % scale error per axis; plus a small acc bias per subject's device.
    Static windows therefore read |acc| = 9.81 +- ~0.3 m/s^2, as phones do.
  * Recordings: one per subject, all activities in a random order, each about
    ``seconds_per_activity`` long (0.8-1.2x), separated by 1.5-3 s unlabelled (-1)
    transitions in which posture and gait blend smoothly, as in real recordings.

How hard it is (default config, seeds 0-6, 5-NN on per-window means, stds and dominant
frequency): 0.8-1.0 accuracy within a domain on held-out subjects (walking/stairs and
sitting/standing confusions), but 0.2-0.55 when trained on one domain and tested on
another: the placement and sensor shift that federated learning has to bridge.

What it does not model: real gait biomechanics beyond a few harmonics, heading changes
and turns, placements that swing (wrist, bag), device handling, magnetometers, clock
jitter or missing samples, inter-subject differences in how activities are performed
beyond cadence, amplitude and posture angles, label noise.

Units (as everywhere in fedhar): acc in m/s^2 including gravity (|g| = 9.80665), gyro in
rad/s, channel order acc x, y, z, gyro x, y, z. Body frame: x forward, y left, z up.

``difficulty`` scales every nuisance factor at once: domain rotation angle, domain gain,
sensor noise, bias and scale errors, and the spread between subjects (cadence, amplitude,
posture, placement jitter). 0 gives identical noiseless domains and subjects (sway and
gait drift remain: they are part of the activity, not nuisance); 1 is the default; 2
doubles every nuisance.

Determinism: a domain draws from ``numpy.random.default_rng([seed, 0, domain])``, a
subject from ``default_rng([seed, 1, domain, subject])``, so the same config gives
identical arrays, and adding domains or subjects does not change the existing ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from itertools import groupby

import numpy as np

from fedhar.data.labels import ACTIVITY_ID, UNLABELLED
from fedhar.data.schema import STANDARD_GRAVITY, Recording
from fedhar.errors import FedharError
from fedhar.options import SYNTHETIC_DOMAINS, SYNTHETIC_SEED, SYNTHETIC_SUBJECTS

#: bump when the generated data changes, so cached windows are prepared again
VERSION = 1
DOMAIN_PREFIX = "synthetic-d"
TRANSITION_SECONDS = (1.5, 3.0)  # unlabelled blend between two activities
N_HARMONICS = 8  # of the stride phase: h = 2 is the step frequency


@dataclass(frozen=True)
class Profile:
    """How one activity moves the trunk.

    lin:  trunk linear acceleration, axis ("forward", "left", "up") -> {h: (m/s^2, phase rad)}
          where h indexes harmonics of the stride phase (h = 2 is the step frequency).
    sway: trunk rotation, axis ("roll", "pitch", "yaw") -> {h: (degrees, phase rad)}.
    """

    pitch_deg: float  # posture or lean, forward positive
    roll_deg: float = 0.0
    pitch_jitter_deg: float = 3.0  # between subjects, at difficulty 1
    roll_jitter_deg: float = 2.0
    cadence: tuple[float, float] | None = None  # steps/s, None for static postures
    lin: dict = field(default_factory=dict)
    sway: dict = field(default_factory=dict)
    postural_sway_deg: float = 0.3  # slow irregular sway
    irregular_acc: float = 0.03  # m/s^2, slow irregular linear motion


PROFILES: dict[str, Profile] = {
    "standing": Profile(0.0, pitch_jitter_deg=3.0, postural_sway_deg=0.8, irregular_acc=0.05),
    "sitting": Profile(-25.0, pitch_jitter_deg=6.0, postural_sway_deg=0.4, irregular_acc=0.03),
    "lying": Profile(-85.0, pitch_jitter_deg=4.0, roll_jitter_deg=15.0, postural_sway_deg=0.3,
                     irregular_acc=0.02),
    "walking": Profile(
        4.0, cadence=(1.7, 2.0), postural_sway_deg=0.5, irregular_acc=0.35,
        lin={"forward": {2: (1.5, 1.3), 4: (0.5, 2.0)},
             "left": {1: (0.9, 0.3), 3: (0.3, 0.9)},
             "up": {1: (0.25, 0.0), 2: (2.6, 0.0), 4: (0.9, 0.6), 6: (0.3, 1.2)}},
        sway={"roll": {1: (3.0, 0.0)}, "pitch": {2: (1.5, 0.8)}, "yaw": {1: (4.0, 1.6)}},
    ),
    "upstairs": Profile(
        10.0, cadence=(1.35, 1.65), postural_sway_deg=0.5, irregular_acc=0.35,
        lin={"forward": {2: (1.2, 0.8), 4: (0.6, 1.5)},
             "left": {1: (0.8, 0.2), 3: (0.25, 1.0)},
             "up": {1: (0.35, 0.5), 2: (1.8, 0.0), 4: (1.1, 1.0), 6: (0.45, 2.0)}},
        sway={"roll": {1: (3.5, 0.0)}, "pitch": {2: (2.5, 0.3)}, "yaw": {1: (3.5, 1.6)}},
    ),
    "downstairs": Profile(
        -2.0, cadence=(1.8, 2.2), postural_sway_deg=0.5, irregular_acc=0.45,
        lin={"forward": {2: (1.3, 1.8), 4: (0.6, 0.5)},
             "left": {1: (1.1, 0.5), 3: (0.4, 1.3)},
             "up": {1: (0.4, 0.0), 2: (3.6, 0.0), 4: (1.8, 0.4), 6: (1.1, 0.9), 8: (0.6, 1.4)}},
        sway={"roll": {1: (4.0, 0.3)}, "pitch": {2: (2.0, 1.2)}, "yaw": {1: (3.0, 1.6)}},
    ),
    "running": Profile(
        8.0, cadence=(2.5, 3.0), postural_sway_deg=0.5, irregular_acc=0.8,
        lin={"forward": {2: (3.0, 1.3), 4: (1.0, 2.0)},
             "left": {1: (1.8, 0.3), 3: (0.6, 0.9)},
             "up": {1: (0.6, 0.0), 2: (9.0, 0.0), 4: (3.5, 0.5), 6: (1.5, 1.0)}},
        sway={"roll": {1: (5.0, 0.0)}, "pitch": {2: (3.0, 0.8)}, "yaw": {1: (7.0, 1.6)}},
    ),
}
SUPPORTED_ACTIVITIES: tuple[str, ...] = tuple(PROFILES)
DEFAULT_ACTIVITIES = ("walking", "upstairs", "downstairs", "sitting", "standing", "lying")


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate; part of the window cache key (``as_dict``)."""

    n_domains: int = SYNTHETIC_DOMAINS
    subjects_per_domain: int = SYNTHETIC_SUBJECTS
    activities: tuple[str, ...] = DEFAULT_ACTIVITIES
    seconds_per_activity: float = 30.0  # default set: about 2,400 windows
    rates: tuple[float, ...] = (50.0, 100.0, 200.0)  # Hz, cycled over domains
    difficulty: float = 1.0
    seed: int = SYNTHETIC_SEED

    def __post_init__(self):
        # accept lists (e.g. from JSON or a CLI) but keep the config hashable
        object.__setattr__(self, "activities", tuple(self.activities))
        object.__setattr__(self, "rates", tuple(float(r) for r in self.rates))
        unknown = [a for a in self.activities if a not in PROFILES]
        if unknown:
            raise FedharError(
                f"synthetic data cannot generate {unknown}; "
                f"it knows {', '.join(SUPPORTED_ACTIVITIES)}"
            )
        if not self.activities or len(set(self.activities)) != len(self.activities):
            raise FedharError(
                f"synthetic activities must be distinct and non-empty: {self.activities}"
            )
        if self.n_domains < 1 or self.subjects_per_domain < 1:
            raise FedharError("synthetic data needs at least one domain and one subject per domain")
        if not self.rates or min(self.rates) < 20.0:
            raise FedharError(
                f"synthetic rates must be at least 20 Hz (gait harmonics), got {self.rates}"
            )
        if self.seconds_per_activity <= 0 or self.difficulty < 0:
            raise FedharError("seconds_per_activity must be > 0 and difficulty >= 0")
        if int(self.seed) != self.seed or self.seed < 0:
            raise FedharError(f"synthetic seed must be a non-negative integer, got {self.seed!r}")

    def as_dict(self) -> dict:
        return asdict(self)


def domain_name(domain: int) -> str:
    return f"{DOMAIN_PREFIX}{domain}"


def domain_rate(cfg: SyntheticConfig, domain: int) -> float:
    return cfg.rates[domain % len(cfg.rates)]


# ---------------------------------------------------------------- random draws


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues: rotation by ``angle`` radians about ``axis``."""
    k = axis / np.linalg.norm(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


@dataclass
class Domain:
    """One simulated dataset: device placement and sensor model."""

    rate: float
    mount: np.ndarray  # (3, 3) device axes -> body axes
    mount_angle_deg: float
    gain: float  # placement: how strongly trunk motion reaches the device
    acc_noise: float  # m/s^2, white noise std
    gyro_noise: float  # rad/s
    acc_bias: np.ndarray  # (3,) m/s^2
    gyro_bias: np.ndarray  # (3,) rad/s
    acc_scale: np.ndarray  # (3,)
    gyro_scale: np.ndarray  # (3,)


def make_domain(cfg: SyntheticConfig, domain: int) -> Domain:
    rng = np.random.default_rng([cfg.seed, 0, domain])
    d = cfg.difficulty
    # every draw is made whatever d is, so difficulty only rescales the same domain
    axis, angle = rng.normal(size=3), np.deg2rad(rng.uniform(45.0, 120.0))
    angle = min(angle * d, np.pi)
    gain = np.exp(d * rng.uniform(np.log(0.8), np.log(1.25)))
    acc_noise, gyro_noise = d * rng.uniform(0.05, 0.25), d * rng.uniform(0.005, 0.03)
    acc_bias, gyro_bias = d * rng.normal(0, 0.1, 3), d * rng.normal(0, 0.01, 3)
    acc_scale, gyro_scale = 1 + d * rng.normal(0, 0.01, 3), 1 + d * rng.normal(0, 0.01, 3)
    return Domain(domain_rate(cfg, domain), _rotation(axis, angle), float(np.rad2deg(angle)),
                  float(gain), float(acc_noise), float(gyro_noise), acc_bias, gyro_bias,
                  acc_scale, gyro_scale)


def domain_summary(cfg: SyntheticConfig) -> list[dict]:
    """Per-domain facts (rate, placement, sensor errors), for reports and `data info`."""
    out = []
    for k in range(cfg.n_domains):
        dom = make_domain(cfg, k)
        out.append({
            "domain": domain_name(k), "rate_hz": dom.rate,
            "placement_rotation_deg": round(dom.mount_angle_deg, 1),
            "motion_gain": round(dom.gain, 3),
            "acc_noise_m_s2": round(dom.acc_noise, 4), "gyro_noise_rad_s": round(dom.gyro_noise, 4),
        })
    return out


def _phasors(omega: np.ndarray, n: int) -> np.ndarray:
    """(n, m) exp(1j * k * omega) for k = 0..n-1, as a product of a coarse and a fine grid
    (about 2 sqrt(n) complex exponentials instead of n: these are most of the cost)."""
    block = max(1, int(np.sqrt(n)))
    fine = np.exp(1j * np.arange(block)[:, None] * omega)  # (block, m)
    coarse = np.exp(1j * np.arange(0, n, block)[:, None] * omega)  # (n / block, m)
    return (coarse[:, None, :] * fine[None, :, :]).reshape(-1, len(omega))[:n]


def _smooth_noise(rng, n: int, rate: float, bands: list[tuple[float, float]], terms: int = 5):
    """Slow unit-variance noise, one column per (f_lo, f_hi) Hz band, and its time derivative.

    A sum of ``terms`` sinusoids of random frequency in the band and random phase: smooth,
    so its analytic derivative can drive the gyroscope.
    """
    lo, hi = np.array(bands).T
    freq = rng.uniform(lo, hi, (terms, len(bands))).ravel()
    phase = rng.uniform(0, 2 * np.pi, (terms, len(bands))).ravel()
    z = _phasors(2 * np.pi * freq / rate, n) * np.exp(1j * phase)  # (n, terms * bands)
    scale = np.sqrt(2.0 / terms)
    x = z.imag.reshape(n, terms, -1).sum(1) * scale
    dx = (z.real * (2 * np.pi * freq)).reshape(n, terms, -1).sum(1) * scale
    return x, dx


def _harmonics(table: dict, axes: tuple[str, ...], scale: float = 1.0) -> np.ndarray:
    """(len(axes), N_HARMONICS) complex coefficients c, signal = Re(c * exp(i h phi/2))."""
    out = np.zeros((len(axes), N_HARMONICS), complex)
    for j, axis in enumerate(axes):
        for h, (amp, phase) in table.get(axis, {}).items():
            out[j, h - 1] = scale * amp * np.exp(1j * phase)
    return out


# ---------------------------------------------------------------- one recording


def _schedule(rng, cfg: SyntheticConfig, rate: float):
    """Activity order and per-sample blend: (labels, a, b, w, dw/dt) with a/b activity indices."""
    order = rng.permutation(len(cfg.activities))
    durations = np.rint(cfg.seconds_per_activity * rng.uniform(0.8, 1.2, len(order)) * rate)
    gaps = np.rint(rng.uniform(*TRANSITION_SECONDS, len(order)) * rate)
    labels, a, b, w, dw = [], [], [], [], []
    for pos, act in enumerate(order):
        n = int(durations[pos])
        labels.append(np.full(n, ACTIVITY_ID[cfg.activities[act]]))
        a.append(np.full(n, act))
        b.append(np.full(n, act))
        w.append(np.zeros(n))
        dw.append(np.zeros(n))
        if pos + 1 < len(order):
            n = int(gaps[pos])
            u = (np.arange(n) + 0.5) / n
            labels.append(np.full(n, UNLABELLED))
            a.append(np.full(n, act))
            b.append(np.full(n, order[pos + 1]))
            w.append(u * u * (3 - 2 * u))  # smoothstep: no jump in angular velocity
            dw.append(6 * u * (1 - u) * rate / n)
    cat = np.concatenate
    return cat(labels).astype(np.int64), cat(a), cat(b), cat(w), cat(dw)


def _blend(values: np.ndarray, a, b, w, dw):
    """Per-sample blend of per-activity values (n_act, ...) and its time derivative."""
    va, vb = values[a], values[b]
    ww = w.reshape(-1, *([1] * (va.ndim - 1)))
    dww = dw.reshape(ww.shape)
    return (1 - ww) * va + ww * vb, dww * (vb - va)


def generate_subject(cfg: SyntheticConfig, dom: Domain, domain: int, subject: int) -> Recording:
    rng = np.random.default_rng([cfg.seed, 1, domain, subject])
    d, rate = cfg.difficulty, dom.rate
    profiles = [PROFILES[name] for name in cfg.activities]
    n_act = len(profiles)

    # who this subject is (all draws unconditional, then scaled by difficulty)
    quantile = np.clip(0.5 + d * (rng.uniform() - 0.5), 0, 1)  # fast or slow walker
    amp = np.exp(d * rng.normal(0, 0.15)) * np.exp(d * rng.normal(0, 0.08, n_act)) * dom.gain
    pitch = np.deg2rad([p.pitch_deg + d * rng.normal(0, p.pitch_jitter_deg) for p in profiles])
    roll = np.deg2rad([p.roll_deg + d * rng.normal(0, p.roll_jitter_deg) for p in profiles])
    cad_jitter = d * rng.normal(0, 0.03, n_act)
    jitter = _rotation(rng.normal(size=3), np.deg2rad(d * rng.normal(0, 6.0)))
    mount = dom.mount @ jitter
    dev_bias = d * rng.normal(0, 0.05, 3)

    labels, a, b, w, dw = _schedule(rng, cfg, rate)
    n = len(labels)

    # cadence: a posture has none, so it takes the subject's mean gait cadence (only
    # matters inside a transition, where the gait fades in or out); slow drift of 2 %
    lo = np.array([p.cadence[0] if p.cadence else np.nan for p in profiles])
    hi = np.array([p.cadence[1] if p.cadence else np.nan for p in profiles])
    cadence = lo + quantile * (hi - lo) + cad_jitter
    fallback = np.nanmean(cadence) if np.isfinite(cadence).any() else 1.0
    cadence = np.where(np.isnan(cadence), fallback, cadence)
    f, _ = _blend(cadence, a, b, w, dw)
    # slow noise columns: 0 cadence drift, 1 amplitude drift, 2-4 postural sway (roll,
    # pitch, yaw), 5-7 irregular linear motion (forward, left, up)
    bands = [(0.01, 0.1)] * 2 + [(0.05, 0.7)] * 3 + [(0.3, 4.0)] * 3
    noise, dnoise = _smooth_noise(rng, n, rate, bands)
    f = f * (1 + 0.02 * noise[:, 0])
    phi = 2 * np.pi * np.cumsum(f) / rate  # step phase
    dphi = 2 * np.pi * f
    h = np.arange(1, N_HARMONICS + 1) / 2
    basis = np.empty((n, N_HARMONICS), complex)  # exp(1j * h * phi), by powers
    basis[:, 0] = np.exp(0.5j * phi)
    for k in range(1, N_HARMONICS):
        basis[:, k] = basis[:, k - 1] * basis[:, 0]

    # gait: linear acceleration (forward, left, up) and sway (roll, pitch, yaw) harmonics,
    # each activity evaluated only where it has weight (its run and adjoining transitions)
    gait = np.zeros((n, 6))
    dgait = np.zeros((n, 6))
    for i, (p, s) in enumerate(zip(profiles, amp)):
        if not p.lin and not p.sway:
            continue
        coef = np.concatenate([
            _harmonics(p.lin, ("forward", "left", "up"), s),
            _harmonics(p.sway, ("roll", "pitch", "yaw"), np.deg2rad(1) * np.sqrt(s)),
        ])  # (6, H)
        idx = np.flatnonzero((a == i) | (b == i))
        weight = np.where(a[idx] == i, 1 - w[idx], 0) + np.where(b[idx] == i, w[idx], 0)
        dweight = np.where(a[idx] == i, -dw[idx], 0) + np.where(b[idx] == i, dw[idx], 0)
        wave = np.real(basis[idx] @ coef.T)
        dwave = np.real((basis[idx] * (1j * h)) @ coef.T) * dphi[idx, None]
        gait[idx] += weight[:, None] * wave
        dgait[idx] += weight[:, None] * dwave + dweight[:, None] * wave
    # slow amplitude drift of 8 % (product rule for the derivative)
    mod, dmod = 1 + 0.08 * noise[:, 1:2], 0.08 * dnoise[:, 1:2]
    dgait = dgait * mod + gait * dmod
    gait = gait * mod

    # posture (and lean) plus slow irregular sway; irregular linear motion
    post, dpost = _blend(np.stack([roll, pitch, np.zeros(n_act)], 1), a, b, w, dw)
    sway_amp, dsway_amp = _blend(np.deg2rad([p.postural_sway_deg for p in profiles]), a, b, w, dw)
    sway, dsway = noise[:, 2:5], dnoise[:, 2:5]
    irregular_amp, _ = _blend(np.array([p.irregular_acc for p in profiles]) * amp, a, b, w, dw)
    lin = gait[:, :3] + irregular_amp[:, None] * noise[:, 5:8]
    ang = gait[:, 3:] + post + sway_amp[:, None] * sway
    dang = dgait[:, 3:] + dpost + dsway_amp[:, None] * sway + sway_amp[:, None] * dsway

    acc_body, gyro_body = _body_frame(lin, ang, dang)
    acc = (acc_body @ mount) * dom.acc_scale + dom.acc_bias + dev_bias
    gyro = (gyro_body @ mount) * dom.gyro_scale + dom.gyro_bias
    acc += rng.normal(0, 1, acc.shape) * dom.acc_noise
    gyro += rng.normal(0, 1, gyro.shape) * dom.gyro_noise
    source = f"{domain_name(domain)}/subject-{subject:02d} (synthetic)"
    return Recording(np.hstack([acc, gyro]), labels, rate, subject, source)


def _body_frame(lin: np.ndarray, ang: np.ndarray, dang: np.ndarray):
    """Accelerometer and gyroscope in the body frame.

    Body orientation R = Rz(yaw) Ry(pitch) Rx(roll); ``lin`` is the linear acceleration in
    the heading frame (yaw cancels for it and for gravity). The accelerometer measures
    R^T (a + g e_z); the gyroscope the body-frame angular velocity of R (ZYX Euler rates).
    """
    roll, pitch = ang[:, 0], ang[:, 1]
    droll, dpitch, dyaw = dang.T
    cr, sr, cp, sp = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch)
    fx, fy, fz = lin[:, 0], lin[:, 1], lin[:, 2] + STANDARD_GRAVITY
    ux, uz = cp * fx - sp * fz, sp * fx + cp * fz  # Ry^T
    acc = np.stack([ux, cr * fy + sr * uz, -sr * fy + cr * uz], 1)  # Rx^T
    gyro = np.stack([
        droll - dyaw * sp,
        dpitch * cr + dyaw * cp * sr,
        -dpitch * sr + dyaw * cp * cr,
    ], 1)
    return acc, gyro


# ---------------------------------------------------------------- entry point


def generate_subjects(cfg: SyntheticConfig) -> Iterator[tuple[str, Recording]]:
    """(domain name, one subject's recording at its native rate), subject by subject: a
    population of any size is generated holding one recording at a time.

    Subjects are numbered 1..subjects_per_domain within each domain.
    """
    for k in range(cfg.n_domains):
        dom = make_domain(cfg, k)
        for s in range(1, cfg.subjects_per_domain + 1):
            yield domain_name(k), generate_subject(cfg, dom, k, s)


def generate_recordings(cfg: SyntheticConfig) -> Iterator[tuple[str, list[Recording]]]:
    """(domain name, that domain's recordings at its native rate), domain by domain."""
    for name, group in groupby(generate_subjects(cfg), key=lambda item: item[0]):
        yield name, [rec for _, rec in group]
