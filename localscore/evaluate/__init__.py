"""Evaluation of length generalization: detect objects, match them to requests, count, tabulate."""

from __future__ import annotations

from .detect import detect_objects
from .metrics import (
    CountResult,
    EvaluationResult,
    Proportion,
    SeedTable,
    comparison_table,
    evaluate_counts,
    match_objects,
    wilson_interval,
)
from .runner import evaluate_sampler, request_scenes

__all__ = [
    "CountResult",
    "EvaluationResult",
    "Proportion",
    "SeedTable",
    "comparison_table",
    "detect_objects",
    "evaluate_counts",
    "evaluate_sampler",
    "match_objects",
    "request_scenes",
    "wilson_interval",
]
