r"""Gaussian and Gaussian-mixture oracles: exact denoisers, scores, densities and samples at every sigma.

For a Gaussian ``N(mu, Sigma)`` over flattened images (``D = C * H * W``) with eigendecomposition
``Sigma = U diag(lam) U^T``, the noised density is ``p_sigma = N(mu, Sigma + sigma**2 I)`` and, writing
``y = U^T (x - mu)``::

    D(x, sigma)          = mu + U diag(lam / (lam + sigma**2)) y          (posterior mean, Wiener filter)
    log p_sigma(x)       = -1/2 sum_k [ y_k**2 / (lam_k + sigma**2) + log(2 pi (lam_k + sigma**2)) ]
    score(x, sigma)      = -U diag(1 / (lam + sigma**2)) y  = (D - x) / sigma**2

A mixture ``sum_m w_m N(mu_m, Sigma_m)`` is a Gaussian per component; with responsibilities
``r_m(x) = softmax_m(log w_m + log N(x; mu_m, Sigma_m + sigma**2 I))``::

    D(x, sigma)          = sum_m r_m(x) D_m(x, sigma)
    log p_sigma(x)       = logsumexp_m(log w_m + log N(x; mu_m, Sigma_m + sigma**2 I))

Covariances may be singular (positive semi-definite): ``lam_k = 0`` directions are exact at every
``sigma > 0``; only ``log_prob`` at ``sigma = 0`` needs a non-singular covariance. Given ``std`` instead
of a covariance the components are axis-aligned (no ``D x D`` matrix is ever formed), so large images stay
cheap. All arithmetic runs in float64 by default (``dtype=``); results come back in ``x``'s dtype.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._checks import MAX_ELEMENTS as _MAX_ELEMENTS
from .._checks import as_sigma, check_elements, check_not_meta, check_tensor
from .._errors import describe, fail
from ..conditions import Conditions
from ._base import AnalyticDistribution, check_samples, check_sigma_range

__all__ = ["Gaussian", "GaussianMixture"]

MAX_ELEMENTS = _MAX_ELEMENTS
"""The most elements ``sample`` (``n x C x H x W``) and ``moments`` / ``cov`` / ``covs`` (``M x D x D``) allocate;
checked from the shapes before allocating. Read at call time: ``localscore.oracles.gaussian.MAX_ELEMENTS = 2**31``
raises it where the memory is there."""


def _check_image_shape(mean: Tensor, where: str, name: str, lead: tuple[int, ...]) -> tuple[int, int, int]:
    want = len(lead) + 3
    if mean.dim() != want or tuple(mean.shape[: len(lead)]) != lead:
        lead_txt = "".join(f"{n}, " for n in ("M",) * len(lead))
        raise fail(where, f"argument `{name}` has shape {tuple(mean.shape)}, expected [{lead_txt}C, H, W].",
                   "pass image-shaped means, e.g. torch.zeros(1, 8, 8) for one 1-channel 8x8 image.")
    c, h, w = (int(v) for v in mean.shape[-3:])
    if min(c, h, w) < 1:
        raise fail(where, f"argument `{name}` has an empty image shape {tuple(mean.shape)}.")
    return c, h, w


def _check_finite_param(t: Tensor, where: str, name: str) -> None:
    check_not_meta(t, where, name)
    if not bool(torch.isfinite(t).all()):
        raise fail(where, f"argument `{name}` holds NaN or infinite values.", f"pass a finite `{name}`.")


def _eig_of_cov(cov: Tensor, d: int, where: str, name: str) -> tuple[Tensor, Tensor]:
    """Eigenvalues ``[..., D]`` and eigenvectors ``[..., D, D]`` of symmetric PSD matrices.

    Eigenvalues within round-off of zero, ``lam <= D * eps * max(lam)`` (the usual numerical-rank tolerance,
    ``eps`` of the dtype), are set to exactly 0: a singular covariance stays exactly singular (samples on
    its support, exact ``lam = 0`` directions) whatever the eigensolver's last digits are.
    """
    if cov.shape[-2:] != (d, d):
        raise fail(where, f"argument `{name}` has shape {tuple(cov.shape)}, expected [..., D, D] with D = C*H*W "
                   f"= {d}.", "pass the covariance of the flattened image (x.flatten(1)).")
    _check_finite_param(cov, where, name)
    scale = float(cov.abs().amax()) if cov.numel() else 0.0
    asym = float((cov - cov.transpose(-1, -2)).abs().amax()) if cov.numel() else 0.0
    if asym > 1e-8 * max(scale, 1e-300) + 1e-12:
        raise fail(where, f"argument `{name}` is not symmetric (max |S - S^T| = {asym:.3g}).",
                   f"symmetrise it with `({name} + {name}.mT) / 2`.")
    sym = (cov + cov.transpose(-1, -2)) / 2
    lam, vec = torch.linalg.eigh(sym)
    tol = 1e-10 * max(scale, 1e-300) * d
    if float(lam.min()) < -tol:
        raise fail(where, f"argument `{name}` is not positive semi-definite (smallest eigenvalue "
                   f"{float(lam.min()):.3g}).", "a covariance is A @ A.T for some A; check how it was built.")
    rank_tol = d * torch.finfo(lam.dtype).eps * lam.amax(-1, keepdim=True).clamp_min(0)
    return torch.where(lam <= rank_tol, torch.zeros_like(lam), lam), vec


class _GaussianFamily(AnalyticDistribution):
    """Shared machinery: a mixture of ``M`` Gaussians stored as (log-weights, means, eigenbases)."""

    _name = "GaussianFamily"
    _log_w: Tensor   # [M]
    _mu: Tensor      # [M, D]
    _lam: Tensor     # [M, D]
    _vec: Tensor | None  # [M, D, D] or None (axis-aligned)

    def _setup(self, log_w: Tensor, mu: Tensor, lam: Tensor, vec: Tensor | None, shape: tuple[int, int, int]) -> None:
        self.shape = shape
        self._log_w, self._mu, self._lam, self._vec = log_w, mu, lam, vec
        self.dtype = mu.dtype
        self.device = mu.device

    # --------------------------------------------------------------------------------- maths helpers
    def _rotate_in(self, diff: Tensor) -> Tensor:
        """``y = U^T diff`` for ``diff [B, M, D]``."""
        return diff if self._vec is None else torch.einsum("bmd,mde->bme", diff, self._vec)

    def _rotate_out(self, y: Tensor) -> Tensor:
        """``U y`` for ``y [B, M, D]``."""
        return y if self._vec is None else torch.einsum("bme,mde->bmd", y, self._vec)

    def _component_log_prob(self, y: Tensor, var: Tensor, where: str) -> Tensor:
        """``[B, M]``: ``log N(y; 0, diag(var))`` for ``y [B, M, D]``, ``var [B, M, D]``."""
        if bool((var <= 0).any()):
            raise fail(where, "the density is singular here: a covariance has a zero eigenvalue and sigma = 0.",
                       "evaluate log_prob at sigma > 0, or use a non-singular covariance.")
        return -0.5 * ((y**2 / var) + torch.log(2 * math.pi * var)).sum(-1)

    def _check_device(self, x: Any, where: str) -> None:
        if isinstance(x, torch.Tensor) and x.device != self.device:
            raise fail(where, f"`x` is on {x.device} but this oracle is on {self.device}.",
                       "build the oracle on the images' device (pass its parameters there), or move x.")

    def _prepare(self, x: Any, sigma: Any, cond: Any, where: str, *, allow_zero: bool) -> tuple[Tensor, Tensor]:
        self._check_device(x, where)
        x = self._check_x(x, where)
        if cond is not None:
            if not isinstance(cond, Conditions):
                raise fail(where, f"argument `cond` is {describe(cond)}, expected None (this oracle is "
                           "unconditional).")
            if not cond.is_empty:
                raise fail(where, "this oracle is unconditional but `cond` holds objects.",
                           "pass cond=None (or an empty Conditions); use localscore.oracles.FactorizedObjects "
                           "for conditional oracles.")
        s = as_sigma(sigma, x.shape[0], where, like=x, allow_zero=allow_zero)
        check_sigma_range(s, self.dtype, where)
        return x.to(self.dtype).flatten(1), s.to(self.dtype)

    def _posterior(self, xf: Tensor, s: Tensor, where: str) -> tuple[Tensor, Tensor, Tensor]:
        """Per-component ``y [B, M, D]``, variances ``lam + sigma**2 [B, M, D]`` and log-densities ``[B, M]``."""
        y = self._rotate_in(xf[:, None, :] - self._mu[None])
        var = self._lam[None] + (s**2).view(-1, 1, 1)
        return y, var, self._component_log_prob(y, var, where)

    # ------------------------------------------------------------------------------------- interface
    def score(self, x: Tensor, sigma: Tensor | float, cond: Conditions | None = None) -> Tensor:
        """Exact ``grad_x log p_sigma(x) = (D(x, sigma) - x) / sigma**2`` for ``x [B, C, H, W]`` (``sigma > 0``)."""
        self._check_device(x, f"{self._name}.score")
        return super().score(x, sigma, cond)

    def denoise(self, x: Tensor, sigma: Tensor | float, cond: Conditions | None = None) -> Tensor:
        """Exact ``E[x0 | x_sigma = x]`` for ``x [B, C, H, W]`` and ``sigma`` a float or ``[B]`` (``> 0``).

        ``D = sum_m r_m(x) (mu_m + U_m diag(lam_m / (lam_m + sigma**2)) U_m^T (x - mu_m))``.
        """
        where = f"{self._name}.denoise"
        xf, s = self._prepare(x, sigma, cond, where, allow_zero=False)
        y, var, logn = self._posterior(xf, s, where)
        comp = self._mu[None] + self._rotate_out(y * (self._lam[None] / var))   # [B, M, D]
        r = torch.softmax(self._log_w[None] + logn, dim=1)                     # [B, M]
        out = torch.einsum("bm,bmd->bd", r, comp)
        return out.reshape(x.shape).to(x.dtype)

    def log_prob(self, x: Tensor, sigma: Tensor | float, cond: Conditions | None = None) -> Tensor:
        """``[B]``: ``log p_sigma(x) = logsumexp_m(log w_m + log N(x; mu_m, Sigma_m + sigma**2 I))``.

        ``sigma = 0`` gives the data density (the covariances must then be non-singular).
        """
        where = f"{self._name}.log_prob"
        xf, s = self._prepare(x, sigma, cond, where, allow_zero=True)
        _, _, logn = self._posterior(xf, s, where)
        return torch.logsumexp(self._log_w[None] + logn, dim=1).to(x.dtype)

    def sample(self, n: int | Conditions, *, sigma: float = 0.0, generator: torch.Generator | None = None,
               dtype: torch.dtype | None = None) -> Tensor:
        """Exact samples of ``x_sigma = x_0 + sigma * eps``: ``[n, C, H, W]``.

        A component ``m ~ Categorical(w)`` per sample, then ``x = mu_m + U_m sqrt(lam_m + sigma**2) z``
        (``z ~ N(0, I)``), drawn in the oracle's dtype from ``generator``.

        Args:
            n: the number of samples, or an (empty) Conditions whose batch size is used.
            sigma: noise level ``>= 0``.
            generator: the random source.
            dtype: dtype of the result (default: ``torch.get_default_dtype()``).
        """
        where = f"{self._name}.sample"
        if isinstance(n, Conditions):
            if not n.is_empty:
                raise fail(where, "this oracle is unconditional but the Conditions passed hold objects.",
                           "pass an int (the number of samples).")
            n = n.batch_size
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise fail(where, f"argument `n` is {describe(n)}, expected an int >= 1.")
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (math.isfinite(sigma) and sigma >= 0):
            raise fail(where, f"argument `sigma` is {describe(sigma)}, expected a finite float >= 0.")
        check_sigma_range(torch.tensor([float(sigma)], dtype=torch.float64), self.dtype, where)
        if generator is not None and (not isinstance(generator, torch.Generator)
                                      or generator.device.type != self.device.type):
            raise fail(where, f"argument `generator` is {describe(generator)}, expected a torch.Generator on "
                       f"{self.device} or None.")
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
            raise fail(where, f"argument `dtype` is {describe(dtype)}, expected a floating torch.dtype.")
        d = self._mu.shape[1]
        shape = ", ".join(map(str, self.shape))
        check_elements(n * d, MAX_ELEMENTS, where, f"the samples [n, C, H, W] = [{n}, {shape}]",
                       "draw the samples in batches of fewer images",
                       limit_name="localscore.oracles.gaussian.MAX_ELEMENTS")
        m = self._log_w.shape[0]
        if m == 1:
            idx = torch.zeros(n, dtype=torch.long, device=self.device)
        else:
            idx = torch.multinomial(torch.softmax(self._log_w, 0), n, replacement=True, generator=generator)
        z = torch.randn(n, self._mu.shape[1], generator=generator, dtype=self.dtype, device=self.device)
        y = torch.sqrt(self._lam[idx] + float(sigma) ** 2) * z
        if self._vec is not None:
            y = torch.einsum("bde,be->bd", self._vec[idx], y)
        x = self._mu[idx] + y
        return check_samples(x.reshape(n, *self.shape).to(dtype or torch.get_default_dtype()), where, float(sigma))

    def moments(self, sigma: float = 0.0) -> tuple[Tensor, Tensor]:
        """The exact mean ``[C, H, W]`` and covariance ``[D, D]`` of ``x_sigma`` (in the oracle's dtype).

        ``mean = sum_m w_m mu_m``; ``cov = sum_m w_m (Sigma_m + mu_m mu_m^T) - mean mean^T + sigma**2 I``.

        Examples:
            >>> import torch
            >>> gm = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1), std=0.5)
            >>> mean, cov = gm.moments(sigma=1.0)      # 0.25 + 1 (between modes) + 1 (noise)
            >>> mean.item(), cov.item()
            (0.0, 2.25)
        """
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (math.isfinite(sigma) and sigma >= 0):
            raise fail(f"{self._name}.moments", f"argument `sigma` is {describe(sigma)}, expected a float >= 0.")
        check_sigma_range(torch.tensor([float(sigma)], dtype=torch.float64), self.dtype, f"{self._name}.moments")
        w = torch.softmax(self._log_w, 0)
        mean = torch.einsum("m,md->d", w, self._mu)
        covs = self._covariances(f"{self._name}.moments")
        second = torch.einsum("m,mde->de", w, covs + self._mu[:, :, None] * self._mu[:, None, :])
        cov = second - mean[:, None] * mean[None, :]
        cov = (cov + cov.T) / 2 + float(sigma) ** 2 * torch.eye(cov.shape[0], dtype=self.dtype, device=self.device)
        return mean.reshape(self.shape), cov

    def _covariances(self, where: str) -> Tensor:
        m, d = self._mu.shape
        check_elements(m * d * d, MAX_ELEMENTS, where, f"the covariance matrices [M, D, D] = [{m}, {d}, {d}] "
                       f"(D = C*H*W of images {self.shape})", "use the closed-form methods (denoise, score, "
                       "log_prob, sample), which never form a D x D matrix for a diagonal covariance",
                       limit_name="localscore.oracles.gaussian.MAX_ELEMENTS")
        if self._vec is None:
            return torch.diag_embed(self._lam)
        return torch.einsum("mde,me,mfe->mdf", self._vec, self._lam, self._vec)


def _oracle_dtype(dtype: Any, where: str) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise fail(where, f"argument `dtype` is {describe(dtype)}, expected a floating torch.dtype.",
                   "the oracles compute in float64 by default.")
    return dtype


def _std_to_var(std: Any, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, where: str) -> Tensor:
    """Per-coordinate variances ``shape`` from a float or a tensor broadcastable to ``shape``."""
    if isinstance(std, bool):
        raise fail(where, "argument `std` is a bool, expected a float or a tensor.")
    if isinstance(std, (int, float)):
        t = torch.full(shape, float(std), dtype=dtype, device=device)
    else:
        t = check_tensor(std, where, "std").to(dtype)
        check_not_meta(t, where, "std")
        if t.device != device:
            raise fail(where, f"argument `std` is on {t.device} but `mean` is on {device}.",
                       "put every parameter on one device.")
        try:
            t = torch.broadcast_to(t, shape)
        except RuntimeError as e:
            raise fail(where, f"argument `std` has shape {tuple(t.shape)}, which does not broadcast to {shape}.",
                       "pass a float, or one standard deviation per pixel (or per component).") from e
    if not bool((torch.isfinite(t) & (t >= 0)).all()):
        raise fail(where, "argument `std` holds negative, NaN or infinite values; expected finite values >= 0.")
    return t**2


class Gaussian(_GaussianFamily):
    r"""A Gaussian distribution over images, ``x_0 ~ N(mean, cov)``, with everything in closed form.

    ``D(x, sigma) = mean + cov (cov + sigma**2 I)^{-1} (x - mean)`` (computed through the eigenbasis of
    ``cov``; see the module docstring), ``log_prob``, ``score``, exact ``sample`` at any noise level, the
    exact probability-flow map :meth:`probability_flow`, and :meth:`moments`.

    Args:
        mean: ``[C, H, W]`` the mean image.
        cov: ``[D, D]`` covariance of the flattened image (``D = C * H * W``), symmetric positive
            semi-definite; or ``None``.
        std: instead of ``cov``: a float or a tensor broadcastable to ``[C, H, W]`` of per-pixel standard
            deviations (a diagonal covariance). With neither, ``cov = I``.
        dtype: the computation dtype (float64 by default).

    Raises:
        LocalScoreError: on bad shapes, non-finite values, a non-symmetric or indefinite covariance, or
            both ``cov`` and ``std`` given.

    Examples:
        >>> import torch
        >>> g = Gaussian(torch.zeros(1, 1, 2), std=1.0)
        >>> g(torch.full((1, 1, 1, 2), 2.0), 1.0).flatten().tolist()   # x * 1 / (1 + 1)
        [1.0, 1.0]
        >>> round(g.log_prob(torch.zeros(1, 1, 1, 2), 0.0).item(), 4)  # -log(2 pi)
        -1.8379
    """

    _name = "Gaussian"

    def __init__(self, mean: Tensor, cov: Tensor | None = None, *, std: Tensor | float | None = None,
                 dtype: torch.dtype = torch.float64) -> None:
        where = "Gaussian"
        dtype = _oracle_dtype(dtype, where)
        mean = check_tensor(mean, where, "mean")
        shape = _check_image_shape(mean, where, "mean", ())
        _check_finite_param(mean, where, "mean")
        d = shape[0] * shape[1] * shape[2]
        mu = mean.to(dtype).reshape(1, d)
        if cov is not None and std is not None:
            raise fail(where, "both `cov` and `std` were given; expected one of them.",
                       "pass a full covariance `cov`, or per-pixel standard deviations `std`.")
        vec: Tensor | None = None
        if cov is not None:
            cov = check_tensor(cov, where, "cov")
            if cov.dim() != 2:
                raise fail(where, f"argument `cov` has shape {tuple(cov.shape)}, expected [D, D] with D = {d}.")
            if cov.device != mean.device:
                raise fail(where, f"argument `cov` is on {cov.device} but `mean` is on {mean.device}.")
            lam, v = _eig_of_cov(cov.to(dtype), d, where, "cov")
            lam, vec = lam[None], v[None]
        else:
            lam = _std_to_var(1.0 if std is None else std, shape, dtype, mean.device, where).reshape(1, d)
        self._setup(torch.zeros(1, dtype=dtype, device=mean.device), mu, lam, vec, shape)

    @property
    def mean(self) -> Tensor:
        """``[C, H, W]`` the mean (oracle dtype)."""
        return self._mu[0].reshape(self.shape)

    @property
    def cov(self) -> Tensor:
        """``[D, D]`` the covariance (oracle dtype)."""
        return self._covariances("Gaussian.cov")[0]

    def probability_flow(self, x: Tensor, sigma_from: Tensor | float, sigma_to: Tensor | float) -> Tensor:
        r"""The exact solution of the probability-flow ODE ``dx/dsigma = -sigma * score(x, sigma)``.

        In the eigenbasis (``y = U^T (x - mean)``) the ODE decouples into
        ``dy_k/dsigma = sigma y_k / (lam_k + sigma**2)``, solved by
        ``y_k(sigma_to) = y_k(sigma_from) * sqrt((lam_k + sigma_to**2) / (lam_k + sigma_from**2))``.
        This is the map deterministic samplers (Euler, Heun, DDIM with ``eta = 0``) approximate.

        Args:
            x: ``[B, C, H, W]`` states at ``sigma_from``.
            sigma_from: a float or ``[B]``, ``> 0``.
            sigma_to: a float or ``[B]``, ``>= 0``.

        Returns:
            ``[B, C, H, W]`` the states at ``sigma_to``, in ``x``'s dtype.

        Examples:
            >>> import torch
            >>> g = Gaussian(torch.zeros(1, 1, 1), std=0.0)          # point mass: x ∝ sigma
            >>> g.probability_flow(torch.full((1, 1, 1, 1), 4.0), 2.0, 0.5).item()
            1.0
        """
        where = "Gaussian.probability_flow"
        xf, s0 = self._prepare(x, sigma_from, None, where, allow_zero=False)
        s1 = as_sigma(sigma_to, xf.shape[0], where, like=x, name="sigma_to", allow_zero=True).to(self.dtype)
        check_sigma_range(s1, self.dtype, where, "sigma_to")
        y = self._rotate_in(xf[:, None, :] - self._mu[None])
        ratio = torch.sqrt((self._lam[None] + (s1**2).view(-1, 1, 1)) / (self._lam[None] + (s0**2).view(-1, 1, 1)))
        out = self._mu[None] + self._rotate_out(y * ratio)
        return out[:, 0].reshape(x.shape).to(x.dtype)

    def __repr__(self) -> str:
        kind = "full" if self._vec is not None else "diagonal"
        return f"Gaussian(shape={self.shape}, covariance={kind}, dtype={self.dtype})"


class GaussianMixture(_GaussianFamily):
    r"""A mixture of Gaussians over images, ``x_0 ~ sum_m w_m N(means[m], covs[m])``, in closed form.

    Exact posterior-mean denoiser (responsibility-weighted Wiener filters), ``log_prob`` (a logsumexp),
    ``score``, exact ``sample`` at any noise level, and :meth:`moments`. See the module docstring for the
    formulas.

    Args:
        weights: ``[M]`` non-negative mixture weights (normalised internally; at least one positive).
        means: ``[M, C, H, W]`` component means.
        covs: ``[M, D, D]`` component covariances (``D = C * H * W``), symmetric PSD; or ``None``.
        std: instead of ``covs``: a float, an ``[M]`` tensor (isotropic per component) or an
            ``[M, C, H, W]`` tensor (per pixel). With neither, every component has ``cov = I``.
        dtype: the computation dtype (float64 by default).

    Raises:
        LocalScoreError: on bad shapes, non-finite or negative values, non-PSD covariances, or both
            ``covs`` and ``std`` given.

    Examples:
        >>> import torch
        >>> gm = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([-2.0, 2.0]).view(2, 1, 1, 1), std=0.5)
        >>> x = torch.zeros(3, 1, 1, 1); x[0] = -2.0; x[2] = 2.0
        >>> [round(v, 3) for v in gm(x, 0.1).flatten().tolist()]    # each point sits on a mode
        [-2.0, 0.0, 2.0]
        >>> gm.sample(5, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([5, 1, 1, 1])
    """

    _name = "GaussianMixture"

    def __init__(self, weights: Tensor, means: Tensor, covs: Tensor | None = None, *, std: Tensor | float | None = None,
                 dtype: torch.dtype = torch.float64) -> None:
        where = "GaussianMixture"
        dtype = _oracle_dtype(dtype, where)
        weights = check_tensor(weights, where, "weights")
        means = check_tensor(means, where, "means")
        if weights.dim() != 1 or weights.numel() < 1:
            raise fail(where, f"argument `weights` has shape {tuple(weights.shape)}, expected [M] with M >= 1.")
        m = weights.shape[0]
        shape = _check_image_shape(means, where, "means", (m,))
        if weights.device != means.device:
            raise fail(where, f"argument `weights` is on {weights.device} but `means` is on {means.device}.")
        _check_finite_param(means, where, "means")
        check_not_meta(weights, where, "weights")
        if not bool((torch.isfinite(weights) & (weights >= 0)).all()) or not float(weights.sum()) > 0:
            raise fail(where, f"argument `weights` is {weights.tolist()[:8]}, expected finite values >= 0 with a "
                       "positive sum.", "pass mixture weights (they are normalised for you).")
        d = shape[0] * shape[1] * shape[2]
        w = weights.to(dtype)
        log_w = torch.log(w / w.sum())
        mu = means.to(dtype).reshape(m, d)
        if covs is not None and std is not None:
            raise fail(where, "both `covs` and `std` were given; expected one of them.")
        vec: Tensor | None = None
        if covs is not None:
            covs = check_tensor(covs, where, "covs")
            if covs.dim() != 3 or covs.shape[0] != m:
                raise fail(where, f"argument `covs` has shape {tuple(covs.shape)}, expected [M, D, D] = "
                           f"[{m}, {d}, {d}].")
            if covs.device != means.device:
                raise fail(where, f"argument `covs` is on {covs.device} but `means` is on {means.device}.")
            lam, vec = _eig_of_cov(covs.to(dtype), d, where, "covs")
        else:
            std_v: Tensor | float = 1.0 if std is None else std
            if isinstance(std_v, torch.Tensor) and std_v.dim() == 1:
                if std_v.shape[0] != m:
                    raise fail(where, f"argument `std` has shape {tuple(std_v.shape)}, expected a float, [M] = "
                               f"[{m}] or [M, C, H, W].")
                std_v = std_v.view(m, 1, 1, 1)
            lam = _std_to_var(std_v, (m, *shape), dtype, means.device, where).reshape(m, d)
        self._setup(log_w, mu, lam, vec, shape)

    @property
    def weights(self) -> Tensor:
        """``[M]`` the normalised weights (oracle dtype)."""
        return torch.softmax(self._log_w, 0)

    @property
    def means(self) -> Tensor:
        """``[M, C, H, W]`` the component means (oracle dtype)."""
        return self._mu.reshape(-1, *self.shape)

    @property
    def covs(self) -> Tensor:
        """``[M, D, D]`` the component covariances (oracle dtype)."""
        return self._covariances("GaussianMixture.covs")

    def __repr__(self) -> str:
        kind = "full" if self._vec is not None else "diagonal"
        return (f"GaussianMixture(components={self._log_w.shape[0]}, shape={self.shape}, covariance={kind}, "
                f"dtype={self.dtype})")
