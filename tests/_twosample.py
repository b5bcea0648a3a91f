"""Two-sample statistics for the sampler tests (helpers, not tests)."""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """The (squared) energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| between samples ``[n, ...]``."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())


def energy_test(a: torch.Tensor, b: torch.Tensor, n_perm: int = 200, seed: int = 0) -> float:
    """Permutation p-value of the energy distance between samples ``a [n, ...]`` and ``b [m, ...]``."""
    z = torch.cat([a.flatten(1), b.flatten(1)]).double()
    n, m = a.shape[0], b.shape[0]
    dist = torch.cdist(z, z)
    rng = np.random.default_rng(seed)
    labels = np.zeros((n_perm + 1, n + m))
    labels[0, :n] = 1
    for k in range(1, n_perm + 1):
        labels[k, rng.permutation(n + m)[:n]] = 1
    la = torch.as_tensor(labels)
    lb = 1 - la
    dl_a = la @ dist            # [P, n + m]
    dl_b = lb @ dist
    ab = (dl_a * lb).sum(1) / (n * m)
    aa = (dl_a * la).sum(1) / (n * n)
    bb = (dl_b * lb).sum(1) / (m * m)
    e = 2 * ab - aa - bb
    return float(((e[1:] >= e[0]).sum() + 1) / (n_perm + 1))


def ks_projections(a: torch.Tensor, b: torch.Tensor, n_dirs: int = 8, seed: int = 0) -> float:
    """Smallest Bonferroni-corrected KS p-value over random 1-D projections of ``a`` and ``b``."""
    a, b = a.flatten(1).double().numpy(), b.flatten(1).double().numpy()
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((n_dirs, a.shape[1]))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    ps = [stats.ks_2samp(a @ d, b @ d).pvalue for d in dirs]
    return float(min(1.0, min(ps) * n_dirs))
