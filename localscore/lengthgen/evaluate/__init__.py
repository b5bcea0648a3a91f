"""Evaluation of length generalization: detect objects, match them to requests, count, tabulate; locality."""

from __future__ import annotations

from .detect import detect_objects
from .locality import LOCALITY_FORMAT, REGION_FRACTION, LocalityProfile, locality_profile, locality_table
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
    "LOCALITY_FORMAT",
    "REGION_FRACTION",
    "CountResult",
    "EvaluationResult",
    "LocalityProfile",
    "Proportion",
    "SeedTable",
    "comparison_table",
    "detect_objects",
    "evaluate_counts",
    "evaluate_sampler",
    "locality_profile",
    "locality_table",
    "match_objects",
    "request_scenes",
    "wilson_interval",
]
