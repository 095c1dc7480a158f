"""The names the search writes to MLflow and the report reads back: roles, tags, metric keys.

Tracking (``search/tracking.py``) writes them, the report (``report/``), ``search status`` and
``fetch-best`` read them; spelling a tag twice is how a renamed tag goes unnoticed, so every reader
and writer imports it from here. The feature-flag tags are ``ExperimentConfig.feature_flags()``'s keys
(``config.FEATURE_FLAGS``).
"""

from __future__ import annotations

ROLE_SEARCH = "search"
# Tags of a search's experiment: MLflow 3 opens an experiment without a kind on its GenAI overview.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_TAGS = {EXPERIMENT_KIND_TAG: "custom_model_development"}
ROLE_TRIAL = "trial"

# Tags of every run.
TAG_ROLE = "role"
TAG_SEARCH_ID = "search_id"
TAG_SEARCH_NAME = "search_name"
TAG_STATE = "state"  # trial: running | finished | pruned | errored | interrupted; search: running | finished | incomplete | stopped
# Tags of a trial run.
TAG_TRIAL_ID = "ray_trial_id"
TAG_TRIAL_NAME = "trial_name"
TAG_REPEAT = "repeat"
TAG_LAST_EPOCH = "last_epoch"
TAG_BEST_VALUE = "best_value"
TAG_BEST_EPOCH = "best_epoch"
TAG_BEST_CHECKPOINT = "best_checkpoint"
TAG_CONFIG_HASH = "config_hash"
TAG_VARIANT_HASH = "variant_hash"  # the config hash with the seed reset: repeats of one cell share it
TAG_PRUNED = "pruned"
TAG_ONNX = "onnx"

TRIAL_STATES = ("running", "finished", "pruned", "errored", "interrupted")

# Metrics of a trial run.
EPOCH_PREFIXES = ("train/", "val/")  # logged every epoch with step = epoch
EPOCH_KEYS = ("lr", "epoch_seconds", "epoch_cpu_seconds")
METRIC_PARAMS_COUNT = "params_count"
METRIC_GFLOPS = "gflops"  # per ROI
METRIC_LATENCY_MS = "latency_ms"  # ONNX Runtime, per ROI, at the largest ROI count measured
STATIC_KEYS = (METRIC_PARAMS_COUNT, METRIC_GFLOPS)  # logged once, step 0
BEST_PREFIX = "best/"  # the best checkpoint's metrics, logged with its ONNX

# Artifacts of a trial run.
ONNX_ARTIFACT = "onnx/model.onnx"
SIDECAR_ARTIFACT = "onnx/model.json"
