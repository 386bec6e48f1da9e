"""Evaluation: metrics, test-time augmentation and the run report."""
