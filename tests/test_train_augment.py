"""Augmentations: what they change, what they must not change, and their ranges."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pam.train import augment

RATE = 8000


def chirps(batch: int, seconds: float = 1.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * RATE)) / RATE
    f0 = 500 + 1000 * torch.rand(batch, 1, generator=g)
    return 0.5 * torch.sin(2 * math.pi * (f0 * t + 800 * t**2))


def noise(rows: int, samples: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(rows, samples, generator=g)


def test_overlay_changes_audio_not_labels_and_respects_the_snr_range() -> None:
    x = chirps(64)
    y = (torch.arange(64) % 2).float()[:, None]
    bank = noise(5, 12000)
    g = torch.Generator().manual_seed(7)
    mixed, snr = augment.overlay_background(x, bank, (3.0, 9.0), g)
    assert mixed.shape == x.shape
    assert not torch.allclose(mixed, x)
    assert torch.isfinite(snr).all()
    # The SNR measured independently from the two parts lies in the range asked for.
    added = mixed - x
    measured = 20 * torch.log10(augment.rms(x) / augment.rms(added))
    assert measured.min() >= 3.0 - 1e-3 and measured.max() <= 9.0 + 1e-3
    torch.testing.assert_close(measured, snr, atol=1e-3, rtol=0)
    assert measured.max() - measured.min() > 3.0  # drawn across the range, not fixed
    # Through the batch pipeline, overlay (and gain) leave the labels exactly as they were.
    xa, ya = augment.augment_batch(x, y, torch.Generator().manual_seed(7), backgrounds=bank,
                                   overlay_p=1.0, snr_db=(3.0, 9.0), gain_db=(-6.0, 6.0))
    assert torch.equal(ya, y)
    assert not torch.allclose(xa, x)


def test_overlay_probability_and_silent_rows() -> None:
    x = chirps(200)
    x[0] = 0.0  # silence has no SNR: left alone
    bank = noise(3, 8000)
    mixed, snr = augment.overlay_background(x, bank, (0.0, 10.0), torch.Generator().manual_seed(0), p=0.5)
    changed = (mixed - x).abs().amax(dim=1) > 0
    assert not changed[0] and math.isnan(float(snr[0]))
    assert torch.equal(changed, ~torch.isnan(snr))
    assert 60 < int(changed.sum()) < 140  # about half of 200
    with pytest.raises(ValueError):
        augment.overlay_background(x, noise(2, 4000), (0.0, 10.0))  # segments shorter than the rows


def test_overlay_is_seeded() -> None:
    x, bank = chirps(8), noise(4, 9000)
    a, _ = augment.overlay_background(x, bank, (0.0, 10.0), torch.Generator().manual_seed(3))
    b, _ = augment.overlay_background(x, bank, (0.0, 10.0), torch.Generator().manual_seed(3))
    c, _ = augment.overlay_background(x, bank, (0.0, 10.0), torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_random_gain_stays_in_range() -> None:
    x = chirps(100)
    out = augment.random_gain(x, (-6.0, 3.0), torch.Generator().manual_seed(0))
    gain_db = 20 * torch.log10(augment.rms(out) / augment.rms(x))
    assert gain_db.min() >= -6.0 - 1e-4 and gain_db.max() <= 3.0 + 1e-4
    assert gain_db.max() - gain_db.min() > 4.0


def test_random_crop_takes_contiguous_windows_at_random_offsets() -> None:
    x = torch.arange(3 * 100, dtype=torch.float32).reshape(3, 100).repeat(20, 1)
    out = augment.random_crop(x, 30, torch.Generator().manual_seed(0))
    assert out.shape == (60, 30)
    starts = out[:, 0] - x[:, 0]
    torch.testing.assert_close(out - out[:, :1], torch.arange(30.0).expand(60, 30))  # contiguous
    assert starts.min() >= 0 and starts.max() <= 70 and len(set(starts.tolist())) > 10
    short = augment.random_crop(torch.ones(10, 20), 50, torch.Generator().manual_seed(0))
    assert short.shape == (10, 50) and torch.all(short.sum(dim=1) == 20)  # placed inside zeros


def test_time_shift_is_circular() -> None:
    x = torch.arange(40, dtype=torch.float32).reshape(2, 20)
    out = augment.time_shift(x, 5, torch.Generator().manual_seed(1))
    for row_in, row_out in zip(x, out):
        assert sorted(row_out.tolist()) == sorted(row_in.tolist())
        shift = int((row_out == row_in[0]).nonzero()[0])
        assert torch.equal(row_out, torch.roll(row_in, shift))
        assert min(shift, 20 - shift) <= 5


def test_mix_clips_unites_labels() -> None:
    x = chirps(6)
    y = torch.eye(3).repeat(2, 1)  # one class per row
    mixed, labels = augment.mix_clips(x, y, torch.Generator().manual_seed(0), p=1.0)
    assert torch.all(labels.sum(dim=1) == 2)  # own class plus the partner's (never itself)
    assert torch.all(labels >= y)
    assert not torch.allclose(mixed, x)
    same, kept = augment.mix_clips(x, y, torch.Generator().manual_seed(0), p=0.0)
    assert torch.equal(same, x) and torch.equal(kept, y)


def test_background_bank_cuts_long_recordings() -> None:
    bank = augment.background_bank([np.ones(250, np.float32), np.ones(80, np.float32), np.zeros(200)], 100)
    # 250 samples: starts 0, 50, 100, 150 (150 ends at 250); 80 samples: padded; silence dropped
    assert bank.shape == (5, 100)
    assert float(bank[-1].sum()) == 80.0


def test_spec_augment_masks_stripes_within_their_widths() -> None:
    spec = torch.randn(50, 1, 32, 100) + 5.0  # no natural zeros
    out = augment.spec_augment(spec, torch.Generator().manual_seed(0), time_masks=1, time_width=10,
                               freq_masks=1, freq_width=4)
    assert out.shape == spec.shape
    masked = out == 0
    # Kept cells are untouched; masked cells form whole frames (time) or whole bands (frequency).
    assert torch.equal(out[~masked], spec[~masked])
    frames = masked[:, 0].all(dim=1)  # [batch, frames] fully masked columns
    bands = masked[:, 0].all(dim=2)  # [batch, bands] fully masked rows
    assert torch.equal(masked[:, 0], frames[:, None, :] | bands[:, :, None])
    assert int(frames.sum(dim=1).max()) <= 10 and int(bands.sum(dim=1).max()) <= 4
    assert int(frames.sum()) > 0 and int(bands.sum()) > 0  # widths are drawn, not always 0
    same = augment.spec_augment(spec, torch.Generator().manual_seed(0), time_masks=1, time_width=10,
                                freq_masks=1, freq_width=4, p=0.0)
    assert torch.equal(same, spec)


def test_time_shift_in_the_batch_pipeline_keeps_labels() -> None:
    x, y = chirps(8), torch.ones(8, 1)
    xa, ya = augment.augment_batch(x, y, torch.Generator().manual_seed(0), shift=400)
    assert torch.equal(ya, y) and not torch.equal(xa, x)
    torch.testing.assert_close(augment.rms(xa), augment.rms(x))  # a circular shift moves, never changes, sound
