"""Comet ML experiment tracking that never blocks training.

Online when ``COMET_API_KEY`` is set, otherwise an offline experiment archived under the model
directory (uploadable later with ``comet upload``). Any tracking failure is logged, never raised.
"""
from __future__ import annotations

import logging
import os

from fuserank.config import environment, export

log = logging.getLogger("fuserank.train")

_QUIET = dict(auto_param_logging=False, auto_metric_logging=False, auto_output_logging=False,
              auto_histogram_weight_logging=False, log_env_details=False, log_env_gpu=False,
              log_env_host=False, log_env_cpu=False, log_git_metadata=False, log_git_patch=False,
              log_code=False, display_summary_level=0)


class NullExperiment:
    """Stand-in when comet_ml is not installed or could not start; same calls, no effect."""

    def log_parameters(self, *a, **k): ...
    def log_metrics(self, *a, **k): ...
    def log_metric(self, *a, **k): ...
    def log_image(self, *a, **k): ...
    def log_other(self, *a, **k): ...
    def add_tag(self, *a, **k): ...
    def end(self): ...


def start_experiment(model_dir: str, project: str = "fuserank"):
    export("COMET_DISABLE_AUTO_LOGGING", "1", overwrite=False)
    export("COMET_ERROR_TRACKING_ENABLE", "false", overwrite=False)  # no telemetry calls from offline runs
    try:
        import comet_ml
    except ImportError:
        log.info("comet_ml not installed: experiment not tracked")
        return NullExperiment()
    try:
        if environment().comet_api_key:
            return comet_ml.Experiment(project_name=project, **_QUIET)
        offline_dir = os.path.join(model_dir, "comet")
        os.makedirs(offline_dir, exist_ok=True)
        return comet_ml.OfflineExperiment(project_name=project, offline_directory=offline_dir, **_QUIET)
    except Exception as exc:  # tracking must never take training down
        log.warning("Comet ML experiment could not start (%s): continuing untracked", exc)
        return NullExperiment()
