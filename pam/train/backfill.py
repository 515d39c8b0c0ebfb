"""Write the clip list of a model trained before cards listed their clips, beside its checkpoint.

    python -m pam.train.backfill MODEL.pt      # writes MODEL.clips.json

The card records the training config (data sources, split settings) and the data
fingerprint (a hash of the audio by content, labels, split and backgrounds), so the split can
be rebuilt from the data where it lies and checked: only a rebuilt split whose fingerprint
matches the card's is written. The list goes into a sidecar (``pam.train.clip_sidecar``) that
names the model id; the checkpoint is not rewritten, so its model id, and every store's
detections under it, stay as they are.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pam.detect.checkpoint import ModelError, load_checkpoint, model_id_of
from pam.train.clip_sidecar import write_sidecar
from pam.train.config import TrainConfig
from pam.train.labels import background_files, load_sources
from pam.train.split_file import data_fingerprint
from pam.train.seen import CLIPS_KEY, clip_record
from pam.train.split import assign_splits


def write_clip_list(model_path: str | os.PathLike) -> Path:
    """Rebuild and verify the clips of ``model_path``'s split and write them to its sidecar; returns the sidecar."""
    model = load_checkpoint(model_path)
    training = model.card.training
    if CLIPS_KEY in training:
        raise ModelError(f"{model_path}: its card already lists its clips (no sidecar needed)")
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
    source = (f"rebuilt after training by pam.train.backfill from the recorded config; matches the card's "
              f"data_fingerprint {found}")
    return write_sidecar(model_path, model.model_id, model.card.name, clip_record(clips, splits), source)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the checkpoint; the list is written beside it as <stem>.clips.json")
    args = parser.parse_args(argv)
    try:
        written = write_clip_list(args.model)
    except (ModelError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{written}: the clips of model {model_id_of(args.model)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
