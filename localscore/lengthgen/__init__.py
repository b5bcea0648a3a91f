"""The length-generalization pipeline: scenes, experiments, training recipes, sampling, evaluation, locality.

Everything specific to reproducing length generalization on CLEVR-like scenes lives here, on top of the
core (conditions, denoisers, schedules, sampling, compose, masks, nn, metrics, oracles, testing, train),
which never imports it:

* :mod:`localscore.lengthgen.data`: procedural scenes, layouts, labelling modes, datasets;
* :mod:`localscore.lengthgen.evaluate`: object detection and matching, per-count tables, and the one
  locality measurement :func:`locality_profile`;
* :mod:`localscore.lengthgen.experiments`: :class:`ExperimentConfig` and the benchmark's config files;
* :mod:`localscore.lengthgen.models`: model files, the shipped models, the one loader :func:`load_model`;
* :mod:`localscore.lengthgen.recipes`: :func:`train_experiment`, :func:`sampler`, :func:`evaluate_model`;
* :mod:`localscore.lengthgen.runs`: :class:`RunConfig` / :func:`run_training`, a training run from one JSON
  run configuration.

The ``localscore`` command line and ``benchmarks/length_generalization.py`` drive this one pipeline.
"""

from __future__ import annotations

from .evaluate import LOCALITY_FORMAT, REGION_FRACTION, LocalityProfile, locality_profile, locality_table
from .experiments import METHODS, ExperimentConfig, load_experiments, network_config
from .models import (
    BACKGROUND_MODELS,
    DEMO_EXPERIMENTS,
    MODEL_NAMES,
    SHIPPED_MODELS,
    LoadedModel,
    checkpoint_dir,
    demo_experiments,
    load_model,
    resolve_model,
    save_model,
)
from .recipes import evaluate_model, sampler, train_experiment
from .runs import MODEL_KINDS, RunConfig, run_training

__all__ = [
    "BACKGROUND_MODELS",
    "DEMO_EXPERIMENTS",
    "LOCALITY_FORMAT",
    "METHODS",
    "MODEL_KINDS",
    "MODEL_NAMES",
    "REGION_FRACTION",
    "SHIPPED_MODELS",
    "ExperimentConfig",
    "LoadedModel",
    "LocalityProfile",
    "RunConfig",
    "checkpoint_dir",
    "demo_experiments",
    "evaluate_model",
    "load_experiments",
    "load_model",
    "locality_profile",
    "locality_table",
    "network_config",
    "resolve_model",
    "run_training",
    "sampler",
    "save_model",
    "train_experiment",
]
