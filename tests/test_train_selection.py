"""The recipe-selection script's folds and fold fits, on a few real clips (two epochs: structure, not skill)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pam.train import augment
from pam.train import selection as S
from pam.train.clips import load_clip_set, load_clip_table


def test_folds_and_fold_fits_score_exactly_the_held_out_clips(shared_data: Path, monkeypatch) -> None:
    clips = [c for c in load_clip_table(shared_data / "bobwhite" / "labels.csv") if c.site == "WLFW_AL"]
    clips = [c for c in clips if c.labels][:8] + [c for c in clips if not c.labels][:8]
    parts = S.folds(clips, 4, seed=0)
    assert sorted(i for p in parts for i in p) == list(range(len(clips)))  # a partition
    for p in parts:  # whole recordings, both labels in every fold
        assert not {clips[i].recording for i in p} & {clips[i].recording for q in parts if q is not p for i in q}
        assert {bool(clips[i].labels) for i in p} == {True, False}

    data = load_clip_set(clips, S.CLASSES, S.BASE_SPEC.sample_rate)
    bank = augment.background_bank([data.negatives().waves[0]], round(4.0 * S.BASE_SPEC.sample_rate))
    test_idx, train_idx = parts[0], [i for p in parts[1:] for i in p]
    tiny = {**S.SPEC_AUG, "epochs": 2}
    torch.manual_seed(0)
    r = S.run_fold("tiny", S.BAND_SPEC, tiny, True, clips, data, train_idx, test_idx,
                   [data.negatives().waves[1]], bank, seed=0)
    assert r["test_idx"] == test_idx and len(r["y"]) == len(r["clean"]) == len(r["shifted"]) == len(test_idx)
    assert r["y"] == [float(bool(clips[i].labels)) for i in test_idx]
    assert 0.0 <= r["threshold"] <= 1.0 and r["epochs_run"] == 2

    monkeypatch.setitem(S.CANDIDATES, "tiny", (S.BAND_SPEC, tiny, True))
    c = S.calibration_fold("tiny", clips, data, train_idx, test_idx, [data.negatives().waves[1]], bank, 0, 2)
    positives = int(np.sum([bool(clips[i].labels) for i in test_idx]))
    for view in ("clean", "shifted"):
        for method in ("clean", "views2"):
            tp, fp, fn = c[f"{view}/{method}"]
            assert tp + fn == positives and 0 <= fp <= len(test_idx) - positives



def test_out_of_fold_rule_takes_its_threshold_from_the_other_folds_only() -> None:
    rows = [
        {"fold": 0, "y": [1, 1, 0], "clean": [0.9, 0.6, 0.1], "shifted": [0.9, 0.4, 0.7], "threshold": 0.5},
        {"fold": 1, "y": [1, 0, 0], "clean": [0.99, 0.95, 0.2], "shifted": [0, 0, 0], "threshold": 0.5},
        {"fold": 2, "y": [1, 1, 0], "clean": [0.995, 0.999, 0.3], "shifted": [0, 0, 0], "threshold": 0.5},
    ]
    counts = S.calibration_rules(rows)
    # Worked by hand: fold 0's threshold comes from folds 1 and 2 (positives 0.99-0.999 above the
    # negative 0.95: midpoint 0.97, so 0.9 and 0.6 are missed); fold 1's from folds 0 and 2 (all
    # positives above the negatives: 0.45, so 0.95 is a false call); fold 2's from folds 0 and 1
    # (0.97 again: both of its positives called).
    assert counts["out-of-fold"]["clean"] == [3, 1, 2]
    assert counts["out-of-fold"]["shifted"] == [0, 0, 5]
    # each fold's own validation threshold, 0.5
    assert counts["validation"]["clean"] == [5, 1, 0]
    assert counts["validation"]["shifted"] == [1, 1, 4]


def test_round_4_score_adds_f1_at_the_calibrated_threshold() -> None:
    fold = {"candidate": "c", "y": [1, 1, 0, 0], "clean": [0.9, 0.8, 0.2, 0.1], "shifted": [0.9, 0.3, 0.5, 0.1],
            "threshold": 0.85}
    e = S.calibrated_score([dict(fold, fold=0), dict(fold, fold=1)])["c"]
    # clean: AP 1, recall at precision 0.9 is 1, at 0.85 half the calls are found: F1 2/3
    assert abs(e["clean_f1@thr"] - 2 / 3) < 1e-12
    # shifted: ranking 1,0,1,0: AP (1 + 2/3) / 2; recall at precision 0.9 is 1/2; F1 at 0.85 is 2/3
    assert abs(e["shifted_ap"] - 5 / 6) < 1e-9 and abs(e["shifted_r@p"] - 0.5) < 1e-9
    expected = ((1 + 1 + 2 / 3) / 3 + (5 / 6 + 0.5 + 2 / 3) / 3) / 2
    assert abs(e["calibrated_score"] - expected) < 1e-9
