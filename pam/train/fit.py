"""Training loop and clip scoring for a ``PamNet`` on clips held in memory.

Training sees random ``window_s`` crops of the clips (a clip's labels hold for any crop of
it, so clips should not be much longer than the window), augmented on the batch. Scoring
a clip takes the maximum over windows every ``hop_s`` seconds covering it, which is what
detection on a long recording does around a call; validation uses the same scoring, so
early stopping and calibration judge the model as it will be used.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from pam.detect.model import ModelCard, PamNet
from pam.train import augment
from pam.train.clips import ClipSet
from pam.train.metrics import average_precision
from pam.detect.windows import window_grid


@dataclass
class FitConfig:
    """Every knob of a training run (stored in the model card's training info)."""

    epochs: int = 30
    batch_size: int = 32
    repeats: int = 4  # each training clip is drawn this many times per epoch (different crops)
    lr: float = 3e-3
    weight_decay: float = 1e-2
    schedule: str = "onecycle"  # onecycle | cosine | constant
    warmup: float = 0.15  # onecycle: fraction of steps spent warming up
    patience: int = 8  # epochs without a better validation loss before stopping
    min_epochs: int = 0  # states before this epoch are never kept (validation is noisy while warming up)
    min_delta: float = 1e-4
    keep: str = "best"  # best: lowest validation loss, early stopping | last: all epochs, the final (averaged) state
    overlay_p: float = 0.0  # chance that a training example gets a background overlay
    snr_db: tuple[float, float] = (0.0, 20.0)
    gain_db: tuple[float, float] = (-12.0, 12.0)
    mix_p: float = 0.0  # chance that a training example is mixed with another (labels united)
    shift_s: float = 0.0  # circular time shift of each crop by up to this many seconds
    spec_time_masks: int = 0  # SpecAugment: time stripes per example
    spec_time_width: int = 20  # ... each up to this many frames wide
    spec_freq_masks: int = 0  # SpecAugment: frequency stripes per example
    spec_freq_width: int = 8  # ... each up to this many mel bands wide
    balanced: bool = False  # draw clips so that every label combination is drawn equally often
    ema_decay: float = 0.0  # > 0: validate and keep an exponential moving average of the weights
    hop_s: float = 0.5  # window step when scoring validation clips
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    progress: bool = True

    def to_dict(self) -> dict:
        d = asdict(self)
        d["snr_db"] = list(self.snr_db)
        d["gain_db"] = list(self.gain_db)
        return d

    def fingerprint(self) -> str:
        """Hash of everything that changes the trained weights (not device or progress bars)."""
        d = self.to_dict()
        d.pop("progress")
        d.pop("device")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class FitResult:
    net: PamNet  # with the best state (lowest validation loss) loaded, in eval mode
    history: pd.DataFrame  # one row per epoch: HISTORY_COLUMNS
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    config: FitConfig = field(default_factory=FitConfig)
    resumed_from: int = 0  # epochs already done in the run folder when this call started


HISTORY_COLUMNS = ["epoch", "train_loss", "train_ap", "val_loss", "val_ap", "lr", "seconds"]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"unknown device {name!r} (auto | cpu | cuda | cuda:N)")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but no CUDA device is available")
    return torch.device(name)


def _autocast(device: torch.device):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def clip_windows(wave: np.ndarray | torch.Tensor, sample_rate: int, window_s: float, hop_s: float) -> torch.Tensor:
    """The windows [n, window samples] that cover a clip (last one zero-padded), as in detection."""
    x = torch.as_tensor(wave, dtype=torch.float32)
    grid = window_grid(x.shape[0], sample_rate, window_s, hop_s)
    if len(grid) == 0:
        return x.new_zeros(0, grid.window)
    need = int(grid.starts[-1]) + grid.window
    if x.shape[0] < need:
        x = torch.nn.functional.pad(x, (0, need - x.shape[0]))
    index = torch.from_numpy(grid.starts)[:, None] + torch.arange(grid.window)[None, :]
    return x[index]


def score_clips(
    net: PamNet,
    waves: list[np.ndarray] | ClipSet,
    window_s: float,
    sample_rate: int | None = None,
    hop_s: float = 0.5,
    device: str | torch.device | None = None,
    batch_size: int = 64,
    logits: bool = False,
) -> np.ndarray:
    """Clip scores [n_clips, n_classes]: the maximum over the clip's windows.

    Returns sigmoid scores in [0, 1], or the maximum logits with ``logits=True`` (the same
    ranking; what a loss needs). ``waves`` must be at the model's sample rate.
    """
    if isinstance(waves, ClipSet):
        sample_rate = sample_rate or waves.sample_rate
        waves = waves.waves
    sample_rate = sample_rate or net.spectrogram_settings.sample_rate
    if sample_rate != net.spectrogram_settings.sample_rate:
        raise ValueError(f"clips at {sample_rate} Hz but the model expects {net.spectrogram_settings.sample_rate} Hz")
    dev = torch.device(device) if device is not None else next(net.parameters()).device
    n_classes = net.head.out_features
    if not len(waves):
        return np.zeros((0, n_classes), dtype=np.float32)
    windows = [clip_windows(w, sample_rate, window_s, hop_s) for w in waves]
    owner = torch.cat([torch.full((len(w),), i, dtype=torch.long) for i, w in enumerate(windows)])
    stacked = torch.cat(windows)
    was_training = net.training
    net.eval()
    outs = []
    try:
        with torch.inference_mode(), _autocast(dev):
            for i in range(0, stacked.shape[0], batch_size):
                outs.append(net(stacked[i:i + batch_size].to(dev)).float().cpu())
    finally:
        net.train(was_training)
    per_window = torch.cat(outs)
    best = torch.full((len(waves), n_classes), -math.inf)
    best = best.scatter_reduce(0, owner[:, None].expand(-1, n_classes), per_window, reduce="amax")
    return (best if logits else torch.sigmoid(best)).numpy()


def _mean_ap(targets: np.ndarray, scores: np.ndarray) -> float:
    aps = [average_precision(targets[:, k], scores[:, k]) for k in range(targets.shape[1])]
    aps = [a for a in aps if not math.isnan(a)]
    return float(np.mean(aps)) if aps else float("nan")


def _check_set(name: str, data: ClipSet, card: ModelCard) -> None:
    if list(data.classes) != list(card.classes):
        raise ValueError(f"{name} clips have classes {data.classes} but the model card {card.classes}")
    if data.sample_rate != card.sample_rate:
        raise ValueError(f"{name} clips are at {data.sample_rate} Hz but the model expects {card.sample_rate} Hz")


class _Ema:
    """Moving average of a network's state: smoother to validate than the last step's weights.

    With a few steps per epoch on a small set the raw weights (and BatchNorm statistics)
    swing from epoch to epoch; the average follows the same path without the noise.
    """

    def __init__(self, net: nn.Module, decay: float):
        self.decay = decay
        self.steps = 0
        self.state = {k: v.detach().clone() for k, v in net.state_dict().items()}

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))  # short memory at the start
        for k, v in net.state_dict().items():
            if v.dtype.is_floating_point:
                self.state[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.state[k].copy_(v)


def _crop_batch(waves: list[np.ndarray], index: np.ndarray, length: int, generator: torch.Generator) -> torch.Tensor:
    rows = [augment.random_crop(torch.from_numpy(waves[i])[None, :], length, generator)[0] for i in index]
    return torch.stack(rows)


def _draws(targets: np.ndarray, repeats: int, balanced: bool, rng: np.random.Generator) -> np.ndarray:
    """The order in which clips are drawn in one epoch (``repeats`` x the number of clips).

    ``balanced`` weights each clip by 1 / (clips with its label combination), so rare
    combinations are seen as often as common ones.
    """
    n = len(targets)
    if not balanced:
        return np.concatenate([rng.permutation(n) for _ in range(repeats)])
    keys = [row.tobytes() for row in (targets > 0.5)]
    counts = {k: keys.count(k) for k in set(keys)}
    w = np.array([1.0 / counts[k] for k in keys])
    return rng.choice(n, size=repeats * n, replace=True, p=w / w.sum())


def _save_atomic(obj: dict, path: Path) -> None:
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _state_fingerprint(card: ModelCard, config: FitConfig, train: ClipSet, val: ClipSet | None,
                       start: dict | None) -> str:
    """What a saved training state must agree with to be resumed."""
    blob = json.dumps({
        "config": config.fingerprint(), "classes": card.classes, "spectrogram": card.spectrogram.to_dict(),
        "arch": card.arch.to_dict(), "window_s": card.window_s, "train": [len(train), float(train.targets.sum())],
        "val": [len(val), float(val.targets.sum())] if val is not None else None,
        "start": hashlib.sha256(b"".join(v.cpu().numpy().tobytes() for v in start.values())).hexdigest()[:16]
        if start else None,
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ResumeError(ValueError):
    """A run folder holds a training state that does not belong to this run."""


def fit(
    card: ModelCard,
    train: ClipSet,
    val: ClipSet | None = None,
    backgrounds: ClipSet | list[np.ndarray] | None = None,
    config: FitConfig | None = None,
    net: PamNet | None = None,
    state_dir: str | os.PathLike | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> FitResult:
    """Train ``net`` (a new ``card.build()`` when None) and return it with its history.

    AdamW with a one-cycle, cosine or constant schedule. With ``keep='best'`` the
    validation clips are scored after each epoch (max over windows, as detection does) and
    the state with the lowest validation BCE is kept; training stops after ``patience``
    epochs without improvement (epochs before ``min_epochs`` are neither kept nor counted).
    With ``keep='last'``, or without ``val``, all epochs run and the last state (the moving
    average when ``ema_decay > 0``) is kept; validation is still scored for the history.
    ``backgrounds`` (real background recordings) feed the overlay when ``overlay_p > 0``.

    ``state_dir``: after every epoch the whole training state (weights, moving average,
    optimizer, schedule, random generators, history) goes to ``state_dir/last.pt`` and the
    best state to ``state_dir/best.pt``; a later call with the same data and config
    continues after the last completed epoch and ends exactly as an uninterrupted run.
    ``on_epoch`` is called with each epoch's history row.
    """
    config = config or FitConfig()
    if config.keep not in ("best", "last"):
        raise ValueError(f"unknown keep {config.keep!r} (best | last)")
    _check_set("training", train, card)
    if val is not None:
        _check_set("validation", val, card)
        if len(val) == 0:
            val = None
    if len(train) < 2:
        raise ValueError("need at least two training clips")
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    net = (net or card.build()).to(device)
    start_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    win = round(card.window_s * card.sample_rate)

    bank = None
    if config.overlay_p > 0:
        bg = backgrounds.waves if isinstance(backgrounds, ClipSet) else backgrounds
        if bg is None or not len(bg):
            raise ValueError("overlay_p > 0 needs background clips")
        bank = augment.background_bank(bg, win).to(device)

    cpu_gen = torch.Generator().manual_seed(config.seed)
    dev_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    order_rng = np.random.default_rng(config.seed)
    n_examples = config.repeats * len(train)
    batch = min(config.batch_size, n_examples)
    steps = max(1, n_examples // batch)  # full batches only: BatchNorm needs > 1

    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total = config.epochs * steps
    if config.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total,
                                                    pct_start=config.warmup)
    elif config.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    elif config.schedule == "constant":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _step: 1.0)
    else:
        raise ValueError(f"unknown schedule {config.schedule!r} (onecycle | cosine | constant)")
    loss_fn = nn.BCEWithLogitsLoss()
    targets = torch.from_numpy(train.targets)
    shift = round(config.shift_s * card.sample_rate)
    masking = config.spec_time_masks > 0 or config.spec_freq_masks > 0

    ema = _Ema(net, config.ema_decay) if config.ema_decay > 0 else None
    rows: list[dict] = []
    best_loss, best_epoch, best_state, bad = math.inf, 0, None, 0
    stopped = False
    first_epoch = 1

    state_dir = Path(state_dir) if state_dir is not None else None
    fingerprint = _state_fingerprint(card, config, train, val, start_state)
    if state_dir is not None:
        state_dir.mkdir(parents=True, exist_ok=True)
        last_path = state_dir / "last.pt"
        if last_path.is_file():
            saved = torch.load(last_path, map_location="cpu", weights_only=False)
            if saved.get("fingerprint") != fingerprint:
                raise ResumeError(f"{last_path}: saved training state is from other data or settings; "
                                  "use a new run folder (or start fresh) to train with these")
            net.load_state_dict(saved["net"])
            opt.load_state_dict(saved["opt"])
            sched.load_state_dict(saved["sched"])
            if ema is not None:
                ema.state = {k: v.to(device) for k, v in saved["ema"].items()}
                ema.steps = saved["ema_steps"]
            cpu_gen.set_state(saved["rng"]["cpu"])
            dev_gen.set_state(saved["rng"]["dev"])
            order_rng.bit_generator.state = saved["rng"]["order"]
            torch.set_rng_state(saved["rng"]["torch"])
            if device.type == "cuda" and saved["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(saved["rng"]["cuda"], device)
            rows = list(saved["history"])
            best_loss, best_epoch, bad, stopped = saved["best_loss"], saved["best_epoch"], saved["bad"], saved["stopped"]
            if best_epoch and (state_dir / "best.pt").is_file():
                best_state = torch.load(state_dir / "best.pt", map_location="cpu", weights_only=True)["state"]
            first_epoch = len(rows) + 1
    resumed_from = first_epoch - 1

    def save_state(epoch: int) -> None:
        if state_dir is None:
            return
        _save_atomic({
            "fingerprint": fingerprint, "epoch": epoch, "net": net.state_dict(), "opt": opt.state_dict(),
            "sched": sched.state_dict(), "ema": ema.state if ema is not None else None,
            "ema_steps": ema.steps if ema is not None else 0,
            "rng": {"cpu": cpu_gen.get_state(), "dev": dev_gen.get_state(), "order": order_rng.bit_generator.state,
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
            "history": rows, "best_loss": best_loss, "best_epoch": best_epoch, "bad": bad, "stopped": stopped,
        }, state_dir / "last.pt")

    done = stopped or first_epoch > config.epochs
    bar = tqdm(range(first_epoch, config.epochs + 1), desc="epochs", unit="epoch",
               disable=not config.progress or done, leave=False, initial=first_epoch - 1, total=config.epochs)
    for epoch in ([] if done else bar):
        t0 = time.perf_counter()
        net.train()
        draws = _draws(train.targets, config.repeats, config.balanced, order_rng)
        losses, outs, ys = [], [], []
        inner = tqdm(range(steps), desc=f"epoch {epoch}/{config.epochs}", unit="batch", leave=False,
                     disable=not config.progress or steps < 2)
        for s in inner:
            idx = draws[s * batch:(s + 1) * batch]
            x = _crop_batch(train.waves, idx, win, cpu_gen).to(device, non_blocking=True)
            y = targets[idx].to(device)
            x, y = augment.augment_batch(x, y, dev_gen, backgrounds=bank, overlay_p=config.overlay_p,
                                         snr_db=tuple(config.snr_db), gain_db=tuple(config.gain_db),
                                         mix_p=config.mix_p, shift=shift)
            with _autocast(device):
                spec = net.frontend(x)
                if masking:
                    spec = augment.spec_augment(spec, dev_gen, time_masks=config.spec_time_masks,
                                                time_width=config.spec_time_width,
                                                freq_masks=config.spec_freq_masks,
                                                freq_width=config.spec_freq_width)
                out = net.classify(spec)
            loss = loss_fn(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema.update(net)
            losses.append(float(loss.detach()))
            outs.append(out.detach().float().cpu())
            ys.append(y.detach().cpu())
            inner.set_postfix(loss=f"{losses[-1]:.3f}")
        inner.close()
        row = {"epoch": epoch, "train_loss": float(np.mean(losses)),
               "train_ap": _mean_ap((torch.cat(ys) > 0.5).float().numpy(), torch.cat(outs).numpy()),
               "val_loss": math.nan, "val_ap": math.nan, "lr": opt.param_groups[0]["lr"]}
        live = None
        if ema is not None:  # judge (and keep) the averaged weights; train on with the live ones
            live = copy.deepcopy(net.state_dict())
            net.load_state_dict(ema.state)
        if val is not None:
            logit = score_clips(net, val.waves, card.window_s, card.sample_rate, config.hop_s, device, logits=True)
            row["val_loss"] = float(loss_fn(torch.from_numpy(logit), torch.from_numpy(val.targets)))
            row["val_ap"] = _mean_ap(val.targets, 1 / (1 + np.exp(-logit)))
            if config.keep == "best":
                if epoch < config.min_epochs:
                    pass
                elif row["val_loss"] < best_loss - config.min_delta:
                    best_loss, best_epoch, bad = row["val_loss"], epoch, 0
                    best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
                    if state_dir is not None:
                        _save_atomic({"epoch": epoch, "val_loss": best_loss, "state": best_state},
                                     state_dir / "best.pt")
                else:
                    bad += 1
        if live is not None:
            net.load_state_dict(live)
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        bar.set_postfix(train=f"{row['train_loss']:.3f}", val=f"{row['val_loss']:.3f}", ap=f"{row['val_ap']:.3f}")
        if config.keep == "best" and val is not None and bad >= config.patience:
            stopped = True
        save_state(epoch)
        if on_epoch is not None:
            on_epoch(dict(row))
        if stopped:
            break
    bar.close()
    if best_state is not None:
        net.load_state_dict(best_state)
    else:
        best_epoch = len(rows)
        if ema is not None:
            net.load_state_dict(ema.state)
        if val is not None and rows:
            best_loss = rows[-1]["val_loss"]
    net.eval()
    history = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
    return FitResult(net=net, history=history, best_epoch=best_epoch, best_val_loss=best_loss,
                     stopped_early=stopped, config=config, resumed_from=resumed_from)
