"""Monitoring a served model: the prediction log (SQLite) and the drift / low-confidence report."""

from ..deploy.log import PredictionLog, default_log_path, read_rows
from .report import monitor, psi

__all__ = ["PredictionLog", "default_log_path", "monitor", "psi", "read_rows"]
