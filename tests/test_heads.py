"""Few-shot heads on embeddings: calibrated precision on held-out data, file round trip, model check."""

from __future__ import annotations

import numpy as np
import pytest

from pam.train.heads import Head, HeadError, HeadModelMismatch, fit_head, load_head, train_head
from pam.train.metrics import precision_recall_f1

MODEL = "birdnet-2.4-test"
DIM = 48


def windows(n_recordings: int, per_recording: int, seed: int, sites: tuple[str, ...] = ("A", "B", "C", "D")):
    """Embeddings of windows from many recordings: noise, 'quail' windows shifted along one
    direction, 'wren' along another; separable with a margin, but noisy. Each recording has its
    own offset (its microphone and background), so windows of one recording are alike."""
    rng = np.random.default_rng(seed)
    directions = np.random.default_rng(99).standard_normal((2, DIM))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    x, labels, recs, site = [], [], [], []
    for r in range(n_recordings):
        offset = rng.standard_normal(DIM) * 0.3
        for _ in range(per_recording):
            kind = rng.choice(3, p=[0.7, 0.15, 0.15])
            v = rng.standard_normal(DIM) + offset
            lab: tuple[str, ...] = ()
            if kind:
                v += 6.0 * directions[kind - 1]
                lab = ("quail",) if kind == 1 else ("wren",)
            x.append(v)
            labels.append(lab)
            recs.append(f"s{seed}-rec{r:03d}")
            site.append(sites[r % len(sites)])
    return np.array(x, dtype=np.float16), labels, recs, site


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_a_head_reaches_its_calibrated_precision_on_held_out_data(kind):
    x, labels, recs, sites = windows(40, 20, seed=1)
    head, split = train_head(x, labels, recs, sites, MODEL, kind=kind, target_precision=0.9, seed=0)
    assert head.card.classes == ("quail", "wren")
    # whole recordings on one side of the split, as pam train splits clips
    side = {}
    for r, s in zip(recs, split):
        assert side.setdefault(r, s) == s
    assert {"train", "val"} <= set(split)
    for c in head.card.classes:
        assert head.card.metrics["calibration"][c]["method"] == "precision"
    # new recordings, never seen in training or calibration
    xt, lt, _, _ = windows(60, 20, seed=2)
    scores = head.scores(xt, MODEL)
    for k, c in enumerate(head.card.classes):
        y = np.array([c in lab for lab in lt], dtype=float)
        point = precision_recall_f1(y, scores[:, k], head.card.thresholds[c])
        assert point.precision >= 0.9, (c, point)
        assert point.recall >= 0.8, (c, point)


def test_a_head_on_shuffled_labels_does_not_reach_it():
    """The precision test above could fail: labels unrelated to the embeddings give a head that misses."""
    x, labels, recs, sites = windows(40, 20, seed=1)
    shuffled = [labels[i] for i in np.random.default_rng(0).permutation(len(labels))]
    head, _ = train_head(x, shuffled, recs, sites, MODEL, target_precision=0.9)
    xt, lt, _, _ = windows(60, 20, seed=2)
    y = np.array(["quail" in lab for lab in lt], dtype=float)
    point = precision_recall_f1(y, head.scores(xt, MODEL)[:, 0], head.card.thresholds["quail"])
    assert point.precision < 0.9 or point.recall < 0.8


def test_save_and_load_give_the_same_scores_and_id(tmp_path):
    x, labels, recs, sites = windows(20, 15, seed=3)
    head, _ = train_head(x, labels, recs, sites, MODEL, kind="mlp", hidden=16)
    path = head.save(tmp_path / "quail.npz")
    again = load_head(path)
    assert again.head_id == head.head_id
    assert again.card == head.card
    np.testing.assert_array_equal(again.scores(x, MODEL), head.scores(x, MODEL))
    # the id covers the card: another threshold is another head
    changed = Head(type(head.card)(**{**head.card.__dict__, "thresholds": {"quail": 0.1, "wren": 0.2}}),
                   head.weights)
    assert changed.head_id != head.head_id
    assert len(head.card.training_fingerprint) == 16


def test_a_head_refuses_embeddings_of_another_model(tmp_path):
    x, labels, recs, sites = windows(20, 10, seed=4)
    head, _ = train_head(x, labels, recs, sites, MODEL)
    head = load_head(head.save(tmp_path / "h.npz"))
    with pytest.raises(HeadModelMismatch, match="reads embeddings of model birdnet-2.4-test") as err:
        head.scores(x, "bobwhite-v2")
    assert "\n" not in str(err.value)
    with pytest.raises(HeadError, match="48-d vectors"):
        head.scores(x[:, :10], MODEL)


def test_bad_inputs_are_refused_before_training(tmp_path):
    x, labels, recs, sites = windows(10, 5, seed=5)
    with pytest.raises(HeadError, match="give one of each per window"):
        train_head(x, labels[:-1], recs, sites, MODEL)
    with pytest.raises(HeadError, match="no window is labelled"):
        train_head(x, [()] * len(x), recs, sites, MODEL)
    with pytest.raises(HeadError, match="cannot split the labelled windows"):
        train_head(x, labels, ["one recording"] * len(x), sites, MODEL)
    with pytest.raises(HeadError, match="unknown head kind"):
        train_head(x, labels, recs, sites, MODEL, kind="forest")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(HeadError, match="not a pam head file"):
        load_head(tmp_path / "junk.npz")


def test_sample_weights_decide_between_contradicting_rows():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 8)).astype(np.float32)
    x = np.r_[x, x]  # every row twice: once a call, once not
    y = np.r_[np.ones(40), np.zeros(40)][:, None]
    for heavy, above in ((slice(0, 40), True), (slice(40, 80), False)):
        w = np.ones(80)
        w[heavy] = 10.0
        head = fit_head(x, y, ["quail"], MODEL, sample_weight=w)
        assert (np.median(head.scores(x[:40], MODEL)) > 0.5) == above
    with pytest.raises(HeadError, match="sample weights"):
        fit_head(x, y, ["quail"], MODEL, sample_weight=np.ones(3))
