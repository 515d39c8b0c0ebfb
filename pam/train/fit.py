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
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from pam.detect.model import ModelCard, PamNet
from pam.train import augment
from pam.train.clips import ClipSet
from pam.train.metrics import average_precision
from pam.train.training_state import RandomGenerators, RunFolder, TrainingProgress
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


def _background_bank(config: FitConfig, backgrounds: ClipSet | list[np.ndarray] | None, length: int,
                     device: torch.device) -> torch.Tensor | None:
    """The overlay's background segments on the device, or None when the config overlays nothing."""
    if config.overlay_p <= 0:
        return None
    bg = backgrounds.waves if isinstance(backgrounds, ClipSet) else backgrounds
    if bg is None or not len(bg):
        raise ValueError("overlay_p > 0 needs background clips")
    return augment.background_bank(bg, length).to(device)


def _lr_schedule(opt: torch.optim.Optimizer, config: FitConfig,
                 total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total_steps,
                                                   pct_start=config.warmup)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    if config.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _step: 1.0)
    raise ValueError(f"unknown schedule {config.schedule!r} (onecycle | cosine | constant)")


class _Trainer:
    """One training run's moving parts (network, optimiser, schedule, moving average, random
    generators) and the fixed inputs they work on: trains an epoch, scores validation."""

    def __init__(self, card: ModelCard, config: FitConfig, train: ClipSet, net: PamNet | None,
                 backgrounds: ClipSet | list[np.ndarray] | None):
        self.card, self.config, self.train = card, config, train
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)  # before the network is built: its initial weights
        self.net = (net or card.build()).to(self.device)
        self.start_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        self.window = round(card.window_s * card.sample_rate)
        self.bank = _background_bank(config, backgrounds, self.window, self.device)
        self.generators = RandomGenerators.seeded(config.seed, self.device)
        n_examples = config.repeats * len(train)
        self.batch = min(config.batch_size, n_examples)
        self.steps = max(1, n_examples // self.batch)  # full batches only: BatchNorm needs > 1
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.sched = _lr_schedule(self.opt, config, config.epochs * self.steps)
        self.loss_fn = nn.BCEWithLogitsLoss()
        self.targets = torch.from_numpy(train.targets)
        self.shift = round(config.shift_s * card.sample_rate)
        self.ema = _Ema(self.net, config.ema_decay) if config.ema_decay > 0 else None

    def state(self) -> dict:
        """The entries of ``last.pt`` that ``restore`` reads back."""
        ema = self.ema
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                "ema": ema.state if ema is not None else None, "ema_steps": ema.steps if ema is not None else 0,
                "rng": self.generators.state()}

    def restore(self, saved: dict) -> None:
        self.net.load_state_dict(saved["net"])
        self.opt.load_state_dict(saved["opt"])
        self.sched.load_state_dict(saved["sched"])
        if self.ema is not None:
            self.ema.state = {k: v.to(self.device) for k, v in saved["ema"].items()}
            self.ema.steps = saved["ema_steps"]
        self.generators.restore(saved["rng"])

    def weights_on_cpu(self) -> dict:
        return {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the epoch's draws; its history row, validation columns still NaN."""
        config = self.config
        self.net.train()
        draws = _draws(self.train.targets, config.repeats, config.balanced, self.generators.order)
        losses, outs, ys = [], [], []
        inner = tqdm(range(self.steps), desc=f"epoch {epoch}/{config.epochs}", unit="batch", leave=False,
                     disable=not config.progress or self.steps < 2)
        for s in inner:
            loss, out, y = self._train_step(draws[s * self.batch:(s + 1) * self.batch])
            losses.append(loss)
            outs.append(out)
            ys.append(y)
            inner.set_postfix(loss=f"{loss:.3f}")
        inner.close()
        return {"epoch": epoch, "train_loss": float(np.mean(losses)),
                "train_ap": _mean_ap((torch.cat(ys) > 0.5).float().numpy(), torch.cat(outs).numpy()),
                "val_loss": math.nan, "val_ap": math.nan, "lr": self.opt.param_groups[0]["lr"]}

    def _train_step(self, index: np.ndarray) -> tuple[float, torch.Tensor, torch.Tensor]:
        """One optimiser step on the clips ``index``: its loss, logits and (augmented) targets."""
        config = self.config
        x = _crop_batch(self.train.waves, index, self.window, self.generators.crops).to(self.device, non_blocking=True)
        y = self.targets[index].to(self.device)
        x, y = augment.augment_batch(x, y, self.generators.augment, backgrounds=self.bank, overlay_p=config.overlay_p,
                                     snr_db=tuple(config.snr_db), gain_db=tuple(config.gain_db),
                                     mix_p=config.mix_p, shift=self.shift)
        with _autocast(self.device):
            out = self.net.classify(self._spectrogram(x))
        loss = self.loss_fn(out.float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        if self.ema is not None:
            self.ema.update(self.net)
        return float(loss.detach()), out.detach().float().cpu(), y.detach().cpu()

    def _spectrogram(self, x: torch.Tensor) -> torch.Tensor:
        """The batch's spectrograms, with SpecAugment stripes when the config asks for them."""
        config = self.config
        spec = self.net.frontend(x)
        if config.spec_time_masks > 0 or config.spec_freq_masks > 0:
            spec = augment.spec_augment(spec, self.generators.augment, time_masks=config.spec_time_masks,
                                        time_width=config.spec_time_width, freq_masks=config.spec_freq_masks,
                                        freq_width=config.spec_freq_width)
        return spec

    @contextmanager
    def judged_weights(self) -> Iterator[None]:
        """Inside: the network holds the weights that are validated and kept (the moving average
        when there is one); after: the live weights that training goes on with."""
        if self.ema is None:
            yield
            return
        live = copy.deepcopy(self.net.state_dict())
        self.net.load_state_dict(self.ema.state)
        try:
            yield
        finally:
            self.net.load_state_dict(live)

    def validation_scores(self, val: ClipSet) -> tuple[float, float]:
        """Validation BCE and mean AP of the network's current weights (clip scores as detection's)."""
        logit = score_clips(self.net, val.waves, self.card.window_s, self.card.sample_rate, self.config.hop_s,
                            self.device, logits=True)
        loss = float(self.loss_fn(torch.from_numpy(logit), torch.from_numpy(val.targets)))
        return loss, _mean_ap(val.targets, 1 / (1 + np.exp(-logit)))


def _checked_validation(card: ModelCard, train: ClipSet, val: ClipSet | None, config: FitConfig) -> ClipSet | None:
    """Check the inputs of ``fit``; the validation clips, None when there are none."""
    if config.keep not in ("best", "last"):
        raise ValueError(f"unknown keep {config.keep!r} (best | last)")
    _check_set("training", train, card)
    if val is not None:
        _check_set("validation", val, card)
        if len(val) == 0:
            val = None
    if len(train) < 2:
        raise ValueError("need at least two training clips")
    return val


def _resume(trainer: _Trainer, folder: RunFolder | None) -> TrainingProgress:
    """Restore the trainer from the run folder's last state; the progress it had made."""
    saved = folder.load_last() if folder is not None else None
    if saved is None:
        return TrainingProgress()
    trainer.restore(saved)
    progress = TrainingProgress.from_saved(saved)
    if progress.best_epoch:
        progress.best_state = folder.load_best()
    return progress


def _run_epoch(trainer: _Trainer, progress: TrainingProgress, epoch: int, val: ClipSet | None,
               folder: RunFolder | None) -> dict:
    """Train one epoch, validate it and keep its weights when they are the best; its history row."""
    config = trainer.config
    t0 = time.perf_counter()
    row = trainer.train_epoch(epoch)
    with trainer.judged_weights():
        if val is not None:
            row["val_loss"], row["val_ap"] = trainer.validation_scores(val)
            if config.keep == "best" and progress.count_epoch(epoch, row["val_loss"], config.min_epochs,
                                                              config.min_delta):
                progress.best_state = trainer.weights_on_cpu()
                if folder is not None:
                    folder.save_best(epoch, progress.best_loss, progress.best_state)
    row["seconds"] = time.perf_counter() - t0
    return row


def _train_epochs(trainer: _Trainer, progress: TrainingProgress, val: ClipSet | None, folder: RunFolder | None,
                  on_epoch: Callable[[dict], None] | None) -> None:
    """The epochs not yet done, until the last or until early stopping; ``progress`` is updated
    and, with a run folder, saved after each."""
    config = trainer.config
    first_epoch = len(progress.rows) + 1
    done = progress.stopped or first_epoch > config.epochs
    bar = tqdm(range(first_epoch, config.epochs + 1), desc="epochs", unit="epoch",
               disable=not config.progress or done, leave=False, initial=first_epoch - 1, total=config.epochs)
    for epoch in ([] if done else bar):
        row = _run_epoch(trainer, progress, epoch, val, folder)
        progress.rows.append(row)
        bar.set_postfix(train=f"{row['train_loss']:.3f}", val=f"{row['val_loss']:.3f}", ap=f"{row['val_ap']:.3f}")
        if config.keep == "best" and val is not None and progress.bad >= config.patience:
            progress.stopped = True
        if folder is not None:
            folder.save_last(epoch, {**trainer.state(), **progress.saved()})
        if on_epoch is not None:
            on_epoch(dict(row))
        if progress.stopped:
            break
    bar.close()


def _result(trainer: _Trainer, progress: TrainingProgress, val: ClipSet | None, resumed_from: int) -> FitResult:
    """The network with the kept weights loaded (the best epoch's, else the last or its moving average)."""
    net = trainer.net
    best_epoch, best_loss = progress.best_epoch, progress.best_loss
    if progress.best_state is not None:
        net.load_state_dict(progress.best_state)
    else:
        best_epoch = len(progress.rows)
        if trainer.ema is not None:
            net.load_state_dict(trainer.ema.state)
        if val is not None and progress.rows:
            best_loss = progress.rows[-1]["val_loss"]
    net.eval()
    history = pd.DataFrame(progress.rows, columns=HISTORY_COLUMNS)
    return FitResult(net=net, history=history, best_epoch=best_epoch, best_val_loss=best_loss,
                     stopped_early=progress.stopped, config=trainer.config, resumed_from=resumed_from)


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
    val = _checked_validation(card, train, val, config)
    trainer = _Trainer(card, config, train, net, backgrounds)
    folder = None
    if state_dir is not None:
        folder = RunFolder(state_dir, state_fingerprint(card, config, train, val, trainer.start_state))
    progress = _resume(trainer, folder)
    resumed_from = len(progress.rows)
    _train_epochs(trainer, progress, val, folder, on_epoch)
    return _result(trainer, progress, val, resumed_from)


def state_fingerprint(card: ModelCard, config: FitConfig, train: ClipSet, val: ClipSet | None,
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
