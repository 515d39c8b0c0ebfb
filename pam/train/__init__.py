"""Training, evaluation and calibration of pam detectors.

Submodules, each with one job (import them directly; nothing heavy is imported here):

* ``pam.train.clips``: labelled clip tables (CSV/Parquet) and their audio.
* ``pam.train.augment``: batch augmentations on torch tensors (overlay, gain, crop, mix).
* ``pam.train.metrics``: AP, ROC-AUC, precision/recall/F1 and operating points (numpy).
* ``pam.train.fit``: the training loop and clip scoring (max over windows).
* ``pam.train.training_state``: what a run carries between epochs, and the run folder that resumes it.
* ``pam.train.calibrate``: per-class thresholds from validation scores.
* ``pam.train.bundled``: builds and evaluates the bundled bobwhite model.
"""
