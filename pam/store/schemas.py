"""Every Parquet table pam writes, declared once.

Readers and writers both go through these schemas so a column can never drift between
stages. Each table carries its schema version in the Parquet key-value metadata
(``pam.schema`` = ``<table>/<version>``); bump the version when a column changes meaning.
The same tables are described for users in ``docs/store.md``.
"""

from __future__ import annotations

import pyarrow as pa

UTC_TS = pa.timestamp("us", tz="UTC")

MANIFEST_VERSION = 1
MANIFEST = pa.schema(
    [
        pa.field("recording_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("dump", pa.string()),
        pa.field("size", pa.int64()),
        pa.field("mtime", UTC_TS),
        pa.field("site", pa.string()),
        pa.field("device", pa.string()),
        pa.field("recorder", pa.string()),  # audiomoth | songmeter | unknown
        pa.field("start_time", UTC_TS),  # first sample, UTC; null when no convention matched
        pa.field("time_source", pa.string()),  # comment | filename | none
        pa.field("sample_rate", pa.int32()),
        pa.field("channels", pa.int16()),
        pa.field("frames", pa.int64()),  # frames actually readable
        pa.field("duration_s", pa.float64()),
        pa.field("format", pa.string()),
        pa.field("status", pa.string(), nullable=False),  # see pam.io.manifest.Status
        pa.field("reason", pa.string()),
        pa.field("scanned_at", UTC_TS),
    ]
)

# Detection rows. ``site`` is a partition value of the results table (pam.store.results);
# ``date`` (the row's UTC date) is stored in the files, which results.DETECTION_FILE declares.
# Version 2: ``date`` moved from the partition values into the files (month partitions).
DETECTIONS_VERSION = 2
DETECTION_PARTITIONS = pa.schema([pa.field("site", pa.string()), pa.field("date", pa.string())])
DETECTIONS = pa.schema(
    [
        pa.field("recording_id", pa.string(), nullable=False),
        pa.field("path", pa.string()),
        pa.field("device", pa.string()),
        pa.field("start_sample", pa.int64()),  # window start, in samples of the file's own rate
        pa.field("start_s", pa.float64()),  # window start, seconds into the file
        pa.field("end_s", pa.float64()),
        pa.field("start_time", UTC_TS),  # absolute window start; null when the file had no time
        pa.field("label", pa.string(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("settings_hash", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

# One row per analysed window of a model that gives embeddings (``detect.embeddings: true``),
# committed in the same transaction as the window's detections and done row. Partitioned by
# ``site`` and UTC month like the detections, with ``date`` in the files (version 2). ``embedding`` holds the vector as little-endian
# float16 (``EMBEDDING_DTYPE``), 2 bytes per dimension: Delta Lake has no half-float type.
EMBEDDINGS_VERSION = 2
EMBEDDING_DTYPE = "<f2"
EMBEDDINGS = pa.schema(
    [
        pa.field("recording_id", pa.string(), nullable=False),
        pa.field("start_sample", pa.int64(), nullable=False),  # window start, samples of the file's own rate
        pa.field("start_s", pa.float64()),
        pa.field("start_time", UTC_TS),  # absolute window start; null when the file had no time
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("settings_hash", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("embedding", pa.binary(), nullable=False),  # float16 little-endian, dims = bytes / 2
    ]
)

# One row per (recording, model, settings) committed: the work key. Written after the
# detection parts it covers, so its presence is what makes those parts visible.
# Version 2 added ``commit_seq``: compaction merges done files, whose names carried it.
DONE_VERSION = 2
DONE = pa.schema(
    [
        pa.field("recording_id", pa.string(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("settings_hash", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("site", pa.string()),
        pa.field("path", pa.string()),
        pa.field("windows", pa.int64()),
        pa.field("audio_s", pa.float64()),
        pa.field("detections", pa.int64()),
        pa.field("committed_at", UTC_TS),
        pa.field("commit_seq", pa.int64()),  # the commit number of the flush that committed it
    ]
)

RUNS_VERSION = 1
RUNS = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("flow", pa.string()),  # detect | scan | train | ...
        pa.field("status", pa.string()),  # running | completed | failed
        pa.field("started_at", UTC_TS),
        pa.field("finished_at", UTC_TS),
        pa.field("model_id", pa.string()),
        pa.field("settings_hash", pa.string()),
        pa.field("config_json", pa.string()),
        pa.field("dump", pa.string()),
        pa.field("device", pa.string()),
        pa.field("recordings_total", pa.int64()),
        pa.field("recordings_done", pa.int64()),
        pa.field("recordings_skipped", pa.int64()),  # already done with this model + settings
        pa.field("recordings_failed", pa.int64()),
        pa.field("detections", pa.int64()),
        pa.field("audio_s", pa.float64()),
        pa.field("wall_s", pa.float64()),
        pa.field("failures_json", pa.string()),  # [{"path": ..., "reason": ...}]
        pa.field("pam_version", pa.string()),
        pa.field("host", pa.string()),
    ]
)

# One row per file a run could not use: failed in detection after its retries, or skipped
# by the scan (empty, not audio, unreadable, still being copied) or read only in part.
# Written to reports/failures-<run>.parquet beside the markdown report of the same run.
FAILURES_VERSION = 1
FAILURES = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("site", pa.string()),
        pa.field("path", pa.string(), nullable=False),
        pa.field("stage", pa.string()),  # scan | detect | shard
        pa.field("outcome", pa.string()),  # failed | skipped | partial
        pa.field("status", pa.string()),  # manifest status, pending, or failed
        pa.field("reason", pa.string()),
        pa.field("attempts", pa.int64()),  # detection attempts; null for scan problems
        pa.field("reported_at", UTC_TS),
    ]
)

MODELS_VERSION = 1
MODELS = pa.schema(
    [
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("name", pa.string()),
        pa.field("path", pa.string()),
        pa.field("classes_json", pa.string()),
        pa.field("sample_rate", pa.int32()),
        pa.field("window_s", pa.float64()),
        pa.field("thresholds_json", pa.string()),
        pa.field("metrics_json", pa.string()),
        pa.field("config_json", pa.string()),
        pa.field("data_fingerprint", pa.string()),
        pa.field("parent_id", pa.string()),
        pa.field("registered_at", UTC_TS),
    ]
)

# The head registry (pam.train.head_registry): one row per few-shot head, heads/head-<id>.parquet.
HEADS_VERSION = 1
HEADS = pa.schema(
    [
        pa.field("head_id", pa.string(), nullable=False),
        pa.field("kind", pa.string()),
        pa.field("embedding_model_id", pa.string()),
        pa.field("embedding_dim", pa.int32()),
        pa.field("classes_json", pa.string()),
        pa.field("thresholds_json", pa.string()),
        pa.field("metrics_json", pa.string()),
        pa.field("training_json", pa.string()),
        pa.field("training_fingerprint", pa.string()),
        pa.field("file", pa.string()),
        pa.field("source", pa.string()),
        pa.field("registered_at", UTC_TS),
    ]
)

# Summaries (pam.analysis.summaries, pam.analysis.occupancy). Local dates and hours are the site's own clock
# (config ``sites.<site>.timezone``/``utc_offset``) and are named ``local_*``; they are
# strings/ints, never timestamps, so no reader can mistake them for UTC.

# Recording effort per site x local date x local hour: the base of every "0 vs missing".
EFFORT_VERSION = 1
EFFORT = pa.schema(
    [
        pa.field("site", pa.string(), nullable=False),
        pa.field("local_date", pa.string(), nullable=False),  # YYYY-MM-DD
        pa.field("local_hour", pa.int8(), nullable=False),  # 0-23
        pa.field("recorded_h", pa.float64()),  # usable audio in the manifest
        pa.field("analysed_h", pa.float64()),  # audio scored by the model(s) (done rows)
    ]
)

# Detections per site x local hour x species: the incrementally maintained base table.
HOURLY_COUNTS_VERSION = 1
HOURLY_COUNTS = pa.schema(
    [
        pa.field("site", pa.string(), nullable=False),
        pa.field("local_date", pa.string(), nullable=False),
        pa.field("local_hour", pa.int8(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("detections", pa.int64()),
        pa.field("positive_minutes", pa.int64()),
        pa.field("max_score", pa.float32()),
    ]
)

# Detections per species x site x local day, zero-filled over the days that were surveyed.
DAILY_COUNTS_VERSION = 2
DAILY_COUNTS = pa.schema(
    [
        pa.field("site", pa.string(), nullable=False),
        pa.field("local_date", pa.string(), nullable=False),  # local date of the site, YYYY-MM-DD
        pa.field("label", pa.string(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("detections", pa.int64()),
        pa.field("positive_minutes", pa.int64()),
        pa.field("max_score", pa.float32()),  # null when there was no detection that day
    ]
)

# Richness and effort per site x local day; null counts where the day was not surveyed.
SITE_DAYS_VERSION = 1
SITE_DAYS = pa.schema(
    [
        pa.field("site", pa.string(), nullable=False),
        pa.field("local_date", pa.string(), nullable=False),
        pa.field("recorded_h", pa.float64()),
        pa.field("analysed_h", pa.float64()),
        pa.field("surveyed", pa.bool_()),
        pa.field("detections", pa.int64()),
        pa.field("species", pa.int64()),
        pa.field("species_list", pa.string()),
    ]
)

# Richness and effort per site over the whole deployment.
SITE_RICHNESS_VERSION = 1
SITE_RICHNESS = pa.schema(
    [
        pa.field("site", pa.string(), nullable=False),
        pa.field("first_date", pa.string()),
        pa.field("last_date", pa.string()),
        pa.field("days_recorded", pa.int64()),
        pa.field("days_surveyed", pa.int64()),
        pa.field("recorded_h", pa.float64()),
        pa.field("analysed_h", pa.float64()),
        pa.field("detections", pa.int64()),
        pa.field("species", pa.int64()),
        pa.field("species_list", pa.string()),
    ]
)

# Diel activity: detections per species x site x local hour of day, with the effort behind them
# (the hours that row's model scored; 0 detections where it scored audio and found nothing).
DIEL_VERSION = 2
DIEL = pa.schema(
    [
        pa.field("site", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("local_hour", pa.int8(), nullable=False),
        pa.field("detections", pa.int64()),
        pa.field("analysed_h", pa.float64()),
        pa.field("detections_per_h", pa.float64()),  # null where nothing was analysed
    ]
)

# Detection histories for occupancy models, long form (the CSVs are the wide form), one history
# per species x model, with the survey covariates of each site x period.
OCCUPANCY_VERSION = 2
OCCUPANCY = pa.schema(
    [
        pa.field("label", pa.string(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("site", pa.string(), nullable=False),
        pa.field("period", pa.int32(), nullable=False),  # 1-based survey period
        pa.field("period_start", pa.string()),  # first local date of the period
        pa.field("period_end", pa.string()),  # last local date (inclusive)
        pa.field("surveyed_days", pa.int32()),  # days this model scored audio here in the period
        pa.field("analysed_h", pa.float64()),  # hours this model scored here in the period
        pa.field("doy", pa.int16()),  # day of year of the first surveyed day of the period
        pa.field("start_local_h", pa.float64()),  # local time of the first scored audio that day
        pa.field("from_sunrise_h", pa.float64()),  # hours from sunrise to that audio; null without lat/lon
        pa.field("detected", pa.int8()),  # 1 detected, 0 surveyed but not detected, null not surveyed
    ]
)

# Human-verified detections (pam.analysis.review): one row per clip verdict.
VERIFIED_VERSION = 1
VERIFIED = pa.schema(
    [
        pa.field("recording_id", pa.string()),
        pa.field("path", pa.string(), nullable=False),
        pa.field("site", pa.string()),
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        pa.field("start_time", UTC_TS),
        pa.field("label", pa.string(), nullable=False),
        pa.field("model_id", pa.string()),
        pa.field("score", pa.float32()),
        pa.field("verdict", pa.string(), nullable=False),  # true | false | unsure
        pa.field("notes", pa.string()),
        pa.field("source", pa.string()),  # review CSV it came from
        pa.field("imported_at", UTC_TS),
    ]
)

# Precision per species from verified labels: true / (true + false).
PRECISION_VERSION = 1
PRECISION = pa.schema(
    [
        pa.field("label", pa.string(), nullable=False),
        pa.field("model_id", pa.string()),
        pa.field("verified_true", pa.int64()),
        pa.field("verified_false", pa.int64()),
        pa.field("unsure", pa.int64()),
        pa.field("precision", pa.float64()),  # null when nothing was verified true or false
    ]
)

# The sites and summaries sections of the config the last scan used (pam.store.analysis_config):
# the clocks and positions summaries, the report and exports read when no config is given.
ANALYSIS_CONFIG_VERSION = 1
ANALYSIS_CONFIG = pa.schema(
    [
        pa.field("sites_json", pa.string()),  # {"<site>": {"timezone", "utc_offset", "lat", "lon"}}
        pa.field("summaries_json", pa.string()),  # {"min_score", "model", "period_days"}
        pa.field("written_at", UTC_TS),
    ]
)

TABLES: dict[str, tuple[pa.Schema, int]] = {
    "manifest": (MANIFEST, MANIFEST_VERSION),
    "detections": (DETECTIONS, DETECTIONS_VERSION),
    "done": (DONE, DONE_VERSION),
    "embeddings": (EMBEDDINGS, EMBEDDINGS_VERSION),
    "runs": (RUNS, RUNS_VERSION),
    "failures": (FAILURES, FAILURES_VERSION),
    "models": (MODELS, MODELS_VERSION),
    "heads": (HEADS, HEADS_VERSION),
    "daily_counts": (DAILY_COUNTS, DAILY_COUNTS_VERSION),
    "effort": (EFFORT, EFFORT_VERSION),
    "hourly_counts": (HOURLY_COUNTS, HOURLY_COUNTS_VERSION),
    "site_days": (SITE_DAYS, SITE_DAYS_VERSION),
    "site_richness": (SITE_RICHNESS, SITE_RICHNESS_VERSION),
    "diel": (DIEL, DIEL_VERSION),
    "occupancy": (OCCUPANCY, OCCUPANCY_VERSION),
    "verified": (VERIFIED, VERIFIED_VERSION),
    "precision": (PRECISION, PRECISION_VERSION),
    "analysis_config": (ANALYSIS_CONFIG, ANALYSIS_CONFIG_VERSION),
}


def with_version(table: str) -> pa.Schema:
    """The table's schema with its version stamped into the metadata."""
    schema, version = TABLES[table]
    return schema.with_metadata({b"pam.schema": f"{table}/{version}".encode()})
