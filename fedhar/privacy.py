"""Privacy accounting: (epsilon, delta) of repeated subsampled Gaussian releases.

One place for both guarantees fedhar offers, with Google's ``dp-accounting`` (the library
Flower's own accountant wraps) doing the mathematics; nothing here is an accountant:

* user-level central DP (DP-FedAvg, strategies/dp.py): one release per round, each
  client in it with probability q = --fraction-train, noise multiplier z relative to the
  clip norm of a client's whole update;
* record-level local DP-SGD (fedhar/model/dp_sgd.py): one release per optimiser step,
  each of the client's windows in it with probability batch / windows.

Both use the RDP accountant with Poisson subsampling under add-or-remove-one neighbours
(Mironov et al. 2019), the accounting of Abadi et al. 2016 and McMahan et al. 2018. q = 1
is a plain composed Gaussian mechanism (no amplification).
"""

from __future__ import annotations

import math

import dp_accounting
from dp_accounting import dp_event
from dp_accounting.rdp import RdpAccountant

from fedhar.errors import FedharError

# integer Renyi orders: the fractional ones below 2 make dp-accounting's series warn and drop them
# (only ever matters for epsilon far above any budget worth stating); integers are exact
ORDERS = (*range(2, 65), 128, 256, 512, 1024)


def _releases(noise_multiplier: float, sampling_rate: float, steps: int) -> dp_event.DpEvent:
    gaussian = dp_event.GaussianDpEvent(noise_multiplier)
    one = gaussian if sampling_rate >= 1 else dp_event.PoissonSampledDpEvent(sampling_rate, gaussian)
    return dp_event.SelfComposedDpEvent(one, steps)


def epsilon_spent(noise_multiplier: float, sampling_rate: float, steps: int, delta: float) -> float:
    """The epsilon at ``delta`` after ``steps`` releases (0 before the first; inf without noise)."""
    if steps <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    accountant = RdpAccountant(ORDERS)
    accountant.compose(_releases(noise_multiplier, sampling_rate, steps))
    return float(accountant.get_epsilon(delta))


def noise_multiplier_for(epsilon: float, delta: float, sampling_rate: float, steps: int) -> float:
    """The smallest noise multiplier whose ``steps`` releases spend at most ``epsilon`` at
    ``delta`` (dp-accounting's calibration, tolerance 1e-4)."""
    try:
        return float(dp_accounting.calibrate_dp_mechanism(
            lambda: RdpAccountant(ORDERS), lambda z: _releases(z, sampling_rate, steps), epsilon, delta,
            bracket_interval=dp_accounting.LowerEndpointAndGuess(0.0, 1.0), tol=1e-4))
    except dp_accounting.NoBracketIntervalFoundError:
        raise FedharError(f"no noise multiplier reaches epsilon {epsilon} at delta {delta} over {steps} "
                          f"releases: raise --dp-epsilon or --dp-delta") from None


def check_budget(epsilon: float, delta: float, population: int, what: str) -> None:
    """Refuse settings that promise nothing: epsilon <= 0, delta outside (0, 1/population)."""
    if not epsilon > 0:
        raise FedharError(f"--dp-epsilon must be > 0, got {epsilon}")
    if not 0 < delta < 1 / population:
        raise FedharError(f"--dp-delta must be in (0, 1/{population}) for {population} {what} (a delta of 1/n "
                          f"allows publishing one {what[:-1]} in the clear), got {delta}")
