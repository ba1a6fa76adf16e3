"""Turn native-rate recordings into the common window form.

Units: ``to_si`` converts accelerometer (g) and gyroscope (deg/s) readings to the common
m/s^2 and rad/s (readers call it where their published units differ).

Resampling: a polyphase FIR filter (scipy.signal.resample_poly, Kaiser window) that
low-pass filters before decimating, so 100/200 Hz recordings do not alias into 0-25 Hz.
Labels are carried to the new clock by nearest sample.

Window label rule: windows are cut only inside runs of one activity, so every sample of
a window has the window's label ("pure" windows, the UCI-HAR convention). Unlabelled
samples, and the tail of a run too short for another window, are dropped and counted: these
counts (``AT_WINDOW_RATE``) are of samples at the window rate (50 Hz), after resampling, while
``PrepareReport.samples_in`` and the readers' own drops count samples at the native rate.

Upsampling by more than 2x is noted once per native rate (to 2 significant digits; ``warn``'s
stderr line and the report's notes): such windows hold nothing above half the native rate.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from fractions import Fraction
from math import pi

import numpy as np

from fedhar.data.labels import UNLABELLED
from fedhar.data.schema import STANDARD_GRAVITY, PrepareReport, Recording, WindowSet
from fedhar.errors import DataFormatError, FedharError


@dataclass(frozen=True)
class WindowConfig:
    rate: float = 50.0  # Hz
    length: int = 128  # samples per window (2.56 s at 50 Hz)
    step: int = 64  # samples between window starts (50% overlap)

    def as_dict(self) -> dict:
        return asdict(self)


#: unit name -> factor to the common unit (schema.CHANNEL_UNITS)
ACC_UNITS: dict[str, float] = {"m/s^2": 1.0, "m/s2": 1.0, "m/s²": 1.0, "g": STANDARD_GRAVITY}
GYRO_UNITS: dict[str, float] = {"rad/s": 1.0, "deg/s": pi / 180.0, "dps": pi / 180.0}


DROP_UNLABELLED = "unlabelled samples"
DROP_SHORT_RUN = "samples in activity runs shorter than a window"
DROP_RUN_END = "samples at the end of a run, after its last window"
#: drop reasons counted in samples at the window rate (after resampling), not the native rate
AT_WINDOW_RATE = frozenset({DROP_UNLABELLED, DROP_SHORT_RUN, DROP_RUN_END})
UPSAMPLE_NOTED_ABOVE = 2.0


def warn(report: PrepareReport, message: str, kind: str = "warning") -> None:
    """Tell the user now (one stderr line) and keep it in the report's notes (`fedhar data info`
    shows them, also from the cache); each message once per report."""
    note = f"{kind}: {message}"
    if note not in report.notes:
        report.notes.append(note)
        from tqdm import tqdm  # its write(): on a line of its own, not after a progress bar's text

        tqdm.write(f"fedhar: {note}", file=sys.stderr)


def to_si(signal: np.ndarray, acc_unit: str, gyro_unit: str) -> np.ndarray:
    """(T, 6) acc x, y, z in ``acc_unit`` and gyro x, y, z in ``gyro_unit`` -> m/s^2 and rad/s."""
    return np.concatenate([signal[:, :3] * ACC_UNITS[acc_unit], signal[:, 3:] * GYRO_UNITS[gyro_unit]], axis=1)


def resample(rec: Recording, rate: float) -> Recording:
    """Anti-aliased resampling of a recording to ``rate`` Hz."""
    if abs(rec.rate - rate) < 1e-9:
        return rec
    ratio = Fraction(rate / rec.rate).limit_denominator(1000)
    up, down = ratio.numerator, ratio.denominator
    from scipy.signal import resample_poly  # here: reading prepared windows from the cache never needs it (~1 s)

    signal = resample_poly(rec.signal, up, down, axis=0)
    n_out = len(signal)
    # nearest original sample for each new sample time
    src = np.minimum(np.rint(np.arange(n_out) * rec.rate / rate).astype(np.int64), len(rec.labels) - 1)
    return Recording(signal, rec.labels[src], rate, rec.subject, rec.source)


def label_runs(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """(start, stop, label) of each maximal run of equal labels."""
    if len(labels) == 0:
        return []
    change = np.flatnonzero(np.diff(labels)) + 1
    starts = np.concatenate([[0], change])
    stops = np.concatenate([change, [len(labels)]])
    return [(int(a), int(b), int(labels[a])) for a, b in zip(starts, stops)]


def cut_windows(rec: Recording, cfg: WindowConfig, dataset: str, report: PrepareReport) -> WindowSet:
    """Pure windows of one recording already at ``cfg.rate``."""
    xs, ys = [], []
    for start, stop, label in label_runs(rec.labels):
        n = stop - start
        if label == UNLABELLED:
            report.dropped[DROP_UNLABELLED] += n
            continue
        if n < cfg.length:
            report.dropped[DROP_SHORT_RUN] += n
            continue
        k = 1 + (n - cfg.length) // cfg.step
        covered = (k - 1) * cfg.step + cfg.length
        if covered < n:
            report.dropped[DROP_RUN_END] += n - covered
        idx = start + np.arange(k)[:, None] * cfg.step + np.arange(cfg.length)[None, :]
        xs.append(rec.signal[idx])  # (k, L, 6)
        ys.append(np.full(k, label, np.int64))
    if not xs:
        return WindowSet.empty(cfg.length)
    x = np.concatenate(xs).transpose(0, 2, 1).astype(np.float32, order="C")  # as the cache gives it back: same sums, bit for bit
    y = np.concatenate(ys)
    return WindowSet(x, y, np.full(len(y), rec.subject, np.int64), np.full(len(y), dataset, "<U32"))


def harmonise(items, cfg: WindowConfig, dataset: str, report: PrepareReport) -> WindowSet:
    """Resample and window every item a reader yields.

    Items are Recordings, or WindowSets for datasets published already windowed (their
    reader checks that the published form matches ``cfg``).
    """
    parts = []
    for item in items:
        if isinstance(item, WindowSet):
            if cfg != WindowConfig() or item.x.shape[2] != cfg.length:
                raise FedharError(
                    f"{dataset} is published as fixed windows (50 Hz, 128 samples, 50% overlap); "
                    f"it cannot be re-windowed to {cfg}"
                )
            parts.append(item)
            continue
        report.recordings += 1
        report.samples_in += len(item.labels)
        if not np.isfinite(item.signal).all():  # e.g. a huge value that overflowed a unit conversion
            sample = int(np.flatnonzero(~np.isfinite(item.signal).all(axis=1))[0])
            raise DataFormatError(item.source, f"sample {sample + 1} is out of range (non-finite after "
                                  "conversion to SI units)")
        if cfg.rate / item.rate > UPSAMPLE_NOTED_ABOVE:
            rate = float(f"{item.rate:.2g}")  # one note for recordings at 19.8 and 20.1 Hz (measured rates)
            warn(report, f"{dataset}: recordings at ~{rate:g} Hz are upsampled ~{cfg.rate / rate:.2g}x to "
                         f"{cfg.rate:g} Hz: their windows hold nothing above ~{rate / 2:g} Hz", kind="note")
        parts.append(cut_windows(resample(item, cfg.rate), cfg, dataset, report))
    out = WindowSet.concat(parts)
    report.windows = len(out)
    return out
