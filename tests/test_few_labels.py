"""Few labels (issue 22): which training windows and which clients are labelled."""

import math

import numpy as np
import pytest

from fedhar.data.few_labels import labelled_clients, labelled_windows
from fedhar.errors import FedharError
from simulations.config import FLConfig
from simulations.task import federation


def _groups(y, group):
    for g in np.unique(group):
        for label in np.unique(y[group == g]):
            yield np.flatnonzero((group == g) & (y == label))


def test_each_activity_keeps_the_fraction_in_one_contiguous_block_per_subject():
    rng = np.random.default_rng(0)
    # two subjects, activities recorded in bouts (an activity comes back later in time)
    y = np.concatenate([np.repeat(rng.permutation(6), rng.integers(5, 40, 6)) for _ in range(4)])
    group = np.repeat([1, 2], [len(y) // 2, len(y) - len(y) // 2])
    for fraction in (0.01, 0.05, 0.1, 0.3):
        chosen = labelled_windows(y, group, fraction, seed=[0, 3])
        assert np.all(np.diff(chosen) > 0)  # sorted, no window twice
        for label in range(6):
            of_label = np.flatnonzero(y == label)
            assert np.isin(of_label, chosen).sum() == max(1, math.ceil(round(fraction * len(of_label), 9)))
        for idx in _groups(y, group):
            positions = np.flatnonzero(np.isin(idx, chosen))
            assert np.all(np.diff(positions) == 1)  # one run of that activity's windows in time order
    # one subject (a subject client): ceil(fraction * n) of every activity, at least one
    one = np.ones_like(y)
    for idx in _groups(y, one):
        assert np.isin(idx, labelled_windows(y, one, 0.1, 0)).sum() == max(1, math.ceil(round(0.1 * len(idx), 9)))
    assert len(labelled_windows(y, group, 1.0, 0)) == len(y)


def test_a_client_with_a_few_windows_of_many_subjects_keeps_the_fraction_not_one_per_subject():
    # a Dirichlet client: 2 scattered windows of each of 50 subjects per activity
    y = np.tile(np.repeat([0, 1, 2], 2), 50)
    group = np.repeat(np.arange(50), 6)
    chosen = labelled_windows(y, group, 0.1, seed=[0, 7])
    for label in range(3):
        assert np.isin(np.flatnonzero(y == label), chosen).sum() == 10  # ceil(0.1 * 100), not 50
    # proportional shares: a subject with most of an activity's windows takes most of its labels
    y2, group2 = np.zeros(100, int), np.repeat([1, 2], [90, 10])
    assert np.isin(np.flatnonzero(group2 == 1), labelled_windows(y2, group2, 0.1, 0)).sum() == 9


def test_the_seed_reproduces_the_choice_and_another_seed_moves_it():
    y = np.repeat(np.arange(6), 50)
    group = np.ones_like(y)
    a, b = labelled_windows(y, group, 0.1, [0, 1]), labelled_windows(y, group, 0.1, [0, 1])
    assert np.array_equal(a, b)
    assert not np.array_equal(a, labelled_windows(y, group, 0.1, [1, 1]))
    with pytest.raises(ValueError, match="label fraction"):
        labelled_windows(y, group, 0.0, 0)


def test_labelled_clients_are_a_seeded_choice_of_k():
    assert labelled_clients(10, 0, 0) == list(range(10))
    chosen = labelled_clients(10, 3, 0)
    assert len(chosen) == 3 and chosen == labelled_clients(10, 3, 0) and chosen == sorted(chosen)
    assert len({tuple(labelled_clients(10, 3, s)) for s in range(5)}) > 1


def _cfg(**changes):
    return FLConfig(**{"partition": "subject", "synthetic_domains": 2, "synthetic_subjects": 3, **changes})


def test_the_federation_labels_a_share_of_training_windows_and_never_touches_test_windows():
    full, few = federation(_cfg()), federation(_cfg(label_fraction=0.1))
    assert few.client_names == full.client_names
    for (train, test), (all_train, all_test) in zip(few.splits, full.splits):
        assert np.array_equal(test, all_test)  # test windows unchanged
        assert set(train) < set(all_train)  # labelled: a subset of the training windows
        for label in np.unique(full.windows.y[all_train]):
            n = int(np.sum(full.windows.y[all_train] == label))
            assert int(np.sum(few.windows.y[train] == label)) == math.ceil(round(0.1 * n, 9))
    assert few.few_labels["labelled_windows"] < 0.2 * few.few_labels["training_windows"]
    # statistics need no labels: the normalisation is the full federation's
    assert np.array_equal(few.norm.apply(few.windows.subset(few.splits[0][1])).x,
                          full.norm.apply(full.windows.subset(full.splits[0][1])).x)


def test_only_the_labelled_clients_fine_tune_and_pretraining_is_unaffected():
    full, few = federation(_cfg()), federation(_cfg(labelled_clients=2))
    assert len(few.client_names) == 2 and few.few_labels["clients_without_labels"]
    for name, split in zip(few.client_names, few.splits):
        full_split = full.splits[full.client_names.index(name)]
        assert all(np.array_equal(a, b) for a, b in zip(split, full_split))
    with pytest.raises(FedharError, match="--labelled-clients 99"):
        federation(_cfg(labelled_clients=99))
    with pytest.raises(FedharError, match="--task pretrain uses every training window"):
        _cfg(task="pretrain", label_fraction=0.5)
    with pytest.raises(FedharError, match="--label-fraction must be in"):
        _cfg(label_fraction=1.5)
