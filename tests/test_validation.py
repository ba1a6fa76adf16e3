"""Flower's server optimisers on fedhar replies: bad replies rejected, BatchNorm statistics averaged."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAdam, FedAvgM

from strategies.validation import is_buffer, validated
from tests.test_lora_strategies import reply, server_identity  # noqa: F401 (a fixture)


class _Grid:
    def get_node_ids(self):
        return [1, 2]


def _state(w, mean, var, tracked):
    return {"head.0.weight": np.full((2, 2), w, np.float32), "head.1.running_mean": np.full(2, mean, np.float32),
            "head.1.running_var": np.full(2, var, np.float32), "head.1.num_batches_tracked": np.array(tracked)}


@pytest.mark.parametrize("cls, options", [(FedAvgM, {"server_momentum": 0.9, "server_learning_rate": 0.1}),
                                          (FedAdam, {"eta": 0.01, "eta_l": 0.01})])
def test_buffers_get_the_plain_weighted_mean_while_weights_follow_the_optimiser(cls, options, server_identity):  # noqa: F811
    strategy = validated(cls)(fraction_train=1.0, min_train_nodes=2, min_available_nodes=2, **options)
    start = _state(0.0, 0.0, 1.0, 10)
    list(strategy.configure_train(1, ArrayRecord({k: Array(v) for k, v in start.items()}), ConfigRecord(), _Grid()))
    replies = [reply(_state(1.0, 1.0, 0.5, 12), 10, 1), reply(_state(3.0, 3.0, 0.1, 20), 30, 2)]
    arrays, _ = strategy.aggregate_train(1, replies)
    out = {k: v.numpy() for k, v in arrays.items()}
    np.testing.assert_allclose(out["head.1.running_mean"], 0.25 * 1.0 + 0.75 * 3.0)
    np.testing.assert_allclose(out["head.1.running_var"], 0.25 * 0.5 + 0.75 * 0.1, rtol=1e-6)
    assert out["head.1.num_batches_tracked"].dtype == np.int64 and out["head.1.num_batches_tracked"] == 18
    # the weights themselves took the optimiser's step, not the plain mean (2.5)
    assert not np.allclose(out["head.0.weight"], 2.5)


def test_which_keys_are_buffers():
    assert is_buffer("head.1.running_var") and is_buffer("x.num_batches_tracked")
    assert not is_buffer("head.1.weight") and not is_buffer("blocks.0.attn.q.lora_A.default.weight")
