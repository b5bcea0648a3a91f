"""The exact oracles the sampler tests share (``test_sampling.py``, ``test_sampling_solvers.py``), and the
convergence-order fit on the closed-form probability-flow ODE of :data:`GAUSS`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from localscore.oracles import Gaussian, GaussianMixture
from localscore.schedules import loguniform_sigmas

F64 = torch.float64

MIXTURE = GaussianMixture(
    torch.tensor([0.3, 0.7], dtype=F64),
    torch.tensor([[-2.0, 1.0], [1.5, -0.5]], dtype=F64).view(2, 2, 1, 1),
    torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.25, -0.15], [-0.15, 0.4]]], dtype=F64),
)
"""Two well-separated modes (weights 0.3 / 0.7) over ``2 x 1 x 1`` images, in float64."""

GAUSS = Gaussian(torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=F64).view(1, 2, 2),
                 torch.tensor([[1.0, 0.3, 0.0, 0.1], [0.3, 0.5, 0.1, 0.0], [0.0, 0.1, 0.8, -0.2],
                               [0.1, 0.0, -0.2, 0.3]], dtype=F64))
"""A correlated Gaussian over ``1 x 2 x 2`` images, in float64: its probability-flow ODE has a closed form."""


def flow_slope(sampler: Any, steps: list[int], hi: float = 10.0, **kwargs: Any) -> float:
    """Log-log slope of the endpoint error against the number of steps: a fixed start, a loguniform grid
    ``hi -> 0.05`` (no 0), the exact endpoint from :data:`GAUSS`'s closed-form probability-flow ODE."""
    x = torch.tensor([2.0, -3.0, 1.5, 4.0], dtype=F64).view(1, 1, 2, 2) * hi
    exact = GAUSS.probability_flow(x, hi, 0.05)
    errs = []
    for n in steps:
        sigmas = loguniform_sigmas(n, 0.05, hi, append_zero=False, dtype=F64)
        errs.append(float((sampler(GAUSS, x, sigmas, **kwargs) - exact).norm()))
    return float(np.polyfit(np.log(steps), np.log(errs), 1)[0])
