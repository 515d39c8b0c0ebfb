"""Add the clip list to the card of a model trained before cards listed their clips.

    python -m pam.train.backfill MODEL.pt --out MODEL-with-clips.pt

The card records the training config (data sources, split settings) and the data
fingerprint (a hash of the audio by content, labels, split and backgrounds), so the split can
be rebuilt from the data where it lies and checked: only a rebuilt split whose fingerprint
matches the card's is written. Weights, thresholds, metrics and the creation time are kept;
the file's bytes change, so the model id changes too.
"""

from __future__ import annotations

import argparse
import os
import sys

from pam.detect.checkpoint import ModelError, load_checkpoint, save_checkpoint
from pam.train.config import TrainConfig
from pam.train.labels import background_files, load_sources
from pam.train.run import data_fingerprint
from pam.train.seen import CLIPS_KEY, clip_record
from pam.train.split import assign_splits


def add_clip_record(model_path: str | os.PathLike, out: str | os.PathLike) -> str:
    """Write ``out``: ``model_path`` with ``card.training['clips']`` rebuilt and verified; returns its id."""
    model = load_checkpoint(model_path)
    training = model.card.training
    if CLIPS_KEY in training:
        raise ModelError(f"{model_path}: its card already lists its clips")
    if "config" not in training or "data_fingerprint" not in training:
        raise ModelError(f"{model_path}: its card records no training config and data fingerprint to rebuild "
                         "the split from")
    conf = TrainConfig.model_validate(training["config"])
    clips = load_sources(conf.data, conf.model.window_s)
    s = conf.split
    splits = assign_splits(clips, s.val_fraction, s.test_fraction, s.seed, s.by, s.stratify_site, s.test_sites)
    found = data_fingerprint(clips, splits, background_files(conf.data.backgrounds))
    if found != training["data_fingerprint"]:
        raise ModelError(f"{model_path}: the split rebuilt from the recorded config has data fingerprint {found}, "
                         f"not the card's {training['data_fingerprint']} (the data moved or changed); nothing written")
    model.card.training = {**training, CLIPS_KEY: clip_record(clips, splits),
                           "clips_source": f"rebuilt after training by pam.train.backfill from the recorded config; "
                                           f"matches data_fingerprint {found}"}
    return save_checkpoint(out, model.net, model.card, created_at=model.created_at)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        model_id = add_clip_record(args.model, args.out)
    except (ModelError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"model {model_id}: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
