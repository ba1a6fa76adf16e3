"""Subject-disjoint splits, train-only normalisation and federated partitions."""

import numpy as np
import pytest

from fedhar.data.partition import by_dataset, by_subject, dirichlet
from fedhar.data.schema import WindowSet
from fedhar.data.splits import Normaliser, split_subjects, subject_split, train_test


def make_windows(datasets=("a", "b"), subjects=10, per_subject=12, seed=0):
    rng = np.random.default_rng(seed)
    parts = []
    for k, name in enumerate(datasets):
        n = subjects * per_subject
        x = rng.normal(loc=10 * k + 3, scale=k + 1, size=(n, 6, 128)).astype(np.float32)
        y = rng.integers(0, 6, n)
        subj = np.repeat(np.arange(1, subjects + 1), per_subject)
        parts.append(WindowSet(x, y, subj, np.full(n, name)))
    return WindowSet.concat(parts)


def test_split_subjects_is_seeded_and_disjoint():
    train, test = split_subjects(np.arange(30), 0.3, seed=1)
    assert len(test) == 9 and len(train) == 21 and not set(train) & set(test)
    again = split_subjects(np.arange(30), 0.3, seed=1)
    assert (again[1] == test).all()
    assert not (split_subjects(np.arange(30), 0.3, seed=2)[1] == test).all()


def test_split_subjects_keeps_both_sides_non_empty():
    train, test = split_subjects([5, 6], 0.01)
    assert len(train) == 1 and len(test) == 1
    with pytest.raises(ValueError, match="2 subjects"):
        split_subjects([1, 1, 1])


def test_subject_split_per_dataset_and_published_override():
    ws = make_windows()
    train, test = subject_split(ws, 0.3, seed=0, test_subjects={"b": (1, 2)})
    assert len(train) + len(test) == len(ws)
    for name in ("a", "b"):
        tr = set(train.subject[train.dataset == name])
        te = set(test.subject[test.dataset == name])
        assert not tr & te and len(te) in (2, 3)
    assert set(test.subject[test.dataset == "b"]) == {1, 2}


def test_normaliser_uses_training_statistics_only():
    ws = make_windows()
    train, test, norm = train_test(ws, 0.3, seed=0)
    for name in ("a", "b"):
        x = train.x[train.dataset == name]
        np.testing.assert_allclose(x.mean(axis=(0, 2)), 0, atol=1e-4)
        np.testing.assert_allclose(x.std(axis=(0, 2)), 1, atol=1e-3)
    # test windows are transformed with the train statistics, not their own
    raw_train, raw_test = subject_split(ws, 0.3, seed=0)
    a = raw_test.dataset == "a"
    expected = (raw_test.x[a] - norm.mean["a"][:, None]) / norm.std["a"][:, None]
    np.testing.assert_allclose(test.x[a], expected, rtol=1e-6)
    with pytest.raises(KeyError, match="no normalisation statistics"):
        Normaliser.fit(raw_train.subset(raw_train.dataset == "a")).apply(raw_test)


def test_partitions_cover_every_window_once():
    ws = make_windows()
    for parts in (by_dataset(ws), by_subject(ws), dirichlet(ws, 7, alpha=0.3, seed=0)):
        allidx = np.concatenate(list(parts.values()))
        assert len(allidx) == len(ws) and len(np.unique(allidx)) == len(ws)
    assert list(by_dataset(ws)) == ["a", "b"]
    assert len(by_subject(ws)) == 20 and "a/3" in by_subject(ws)


def test_dirichlet_skews_labels_more_with_small_alpha():
    ws = make_windows(subjects=30)

    def mean_label_entropy(alpha):
        ent = []
        for idx in dirichlet(ws, 8, alpha=alpha, seed=0, min_windows=5).values():
            p = np.bincount(ws.y[idx], minlength=6) / len(idx)
            ent.append(-(p[p > 0] * np.log(p[p > 0])).sum())
        return np.mean(ent)

    assert mean_label_entropy(0.1) < mean_label_entropy(100.0) - 0.5
    a = dirichlet(ws, 8, 0.5, seed=3)
    b = dirichlet(ws, 8, 0.5, seed=3)
    assert all((a[k] == b[k]).all() for k in a)
