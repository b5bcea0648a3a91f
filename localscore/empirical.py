r"""The patch-local empirical score machine: the optimal denoiser under a locality constraint.

It is not an analytic oracle (its data distribution is a finite training set, and it samples with the
library's own sampler), so it lives here, not in :mod:`localscore.oracles`. Its 0.1.0 names,
``localscore.oracles.PatchLocalEmpirical`` and ``localscore.oracles.patch_local``, are deprecated aliases
until 0.3.

Given a training set ``{x^n}`` (``N`` images ``[C, H, W]``) and a radius ``R``, restrict the denoiser's
output at pixel ``l`` to depend only on the noisy patch ``x_{N_l}`` (the ``P x P`` window around ``l``,
``P = 2R + 1``, Chebyshev radius ``R``, zero padding outside the image). The minimiser of the denoising
loss under this constraint, for the empirical data distribution, is the posterior mean of the clean
centre pixel given the noisy patch:

    D(x, sigma)_l = E[x0_l | x_{N_l}] = sum_n w_{n,l} x^n_l,
    w_{n,l} = softmax_n( -||x_{N_l} - x^n_{N_l}||^2 / (2 sigma^2) )

(location-specific: patch ``l`` is compared with the training patches at the same location). The
*equivariant* variant (``equivariant=True``, translation-invariant data) pools the patches of every
location ``l'``: ``D_l = sum_{n,l'} w_{n,l,l'} x^n_{l'}`` with
``w = softmax_{n,l'}( -||m_l * (x_{N_l} - x^n_{N_{l'}})||^2 / (2 sigma^2) )``, where ``m_l`` masks the
window entries of ``l`` that fall outside the image. These are the local and equivariant-local score
machines of Kamb and Ganguli (2025), re-derived here from the constrained-optimum argument.

**Conditional variant.** With training conditions ``c^n`` and a conditioner radius ``r``, pixel ``l``
also sees the conditioners within Chebyshev distance ``r`` of it, summarised by the descriptor

    phi_l(c) = sum_{k valid, max(|row_k - i|, |col_k - j|) <= r}
               (1, (row_k - i) / (r + 1), (col_k - j) / (r + 1), attr_k)

and the weights become
``w_{n,l} = softmax_n( -||x_{N_l} - x^n_{N_l}||^2 / (2 sigma^2) - ||phi_l(c) - phi_l(c^n)||^2 / (2 tau^2) )``:
the posterior mean when the conditioning is observed through ``phi`` with Gaussian noise of scale ``tau``
(``tau -> 0``: exact matching of the local conditioner set).

**Locality by construction.** ``D_l`` depends on ``x`` only through ``x_{N_l}`` (receptive radius ``R``)
and on the conditioners within ``r`` of ``l``: the declared ``receptive_radius = R`` and
``conditioner_radius = ceil(r)`` are exact, which makes this machine the oracle of the locality metrics,
and a training-free local conditional model to sample from.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import MAX_ELEMENTS as _MAX_ELEMENTS
from ._checks import as_sigma, check_elements, check_image
from ._errors import describe, fail
from .conditions import Conditions
from .denoisers import tweedie

__all__ = ["PatchLocalEmpirical"]

MAX_ELEMENTS = _MAX_ELEMENTS
"""The most elements of the training patches ``[N, C (2R + 1)**2, H W]`` (float64: 8 bytes each) and of the
images ``sample`` draws; checked from the shapes before allocating. Read at call time:
``localscore.empirical.MAX_ELEMENTS = 2**31`` raises it where the memory is there."""
_LIMIT = "localscore.empirical.MAX_ELEMENTS"

_CondTerm = tuple[Tensor, Tensor, float]
"""The conditioner term of the weights: query descriptors ``[B, E, L]``, training ones ``[N, E, L]``, and
``1 / (2 tau**2)``."""


class PatchLocalEmpirical:
    r"""The optimal patch-local denoiser of an empirical training set (see the module docstring).

    A denoiser ``D(x, sigma, cond=None)`` with exact, declared locality. Computation runs in ``dtype``
    (float64 by default), vectorised with :func:`torch.nn.functional.unfold` and chunked over pixels so
    that no intermediate exceeds ``max_elements`` entries.

    Args:
        data: ``[N, C, H, W]`` training images.
        radius: the patch radius ``R >= 0`` (Chebyshev; patches are ``(2R + 1)^2`` pixels).
        cond: optional training conditions, one set per image (``N`` sets): enables the conditional variant.
        conditioner_radius: ``r >= 0``, how far from a pixel its conditioners are seen (conditional variant).
        temperature: ``tau > 0``, the matching scale of the conditioner descriptors.
        equivariant: pool the patches of all locations (translation-equivariant machine).
        dtype: compute dtype.
        max_elements: the largest intermediate (``query pixels x training patches``) per chunk.

    Attributes:
        receptive_radius: ``R``.
        conditioner_radius: ``ceil(r)`` (only with ``cond``).
        shape: ``(C, H, W)``.
        translation_equivariant: ``False``: the machine takes only images of the training shape, so it is
            never evaluated on crops (even the equivariant variant, whose border masks depend on the shape).

    Examples:
        >>> import torch
        >>> data = torch.randn(20, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        >>> D = PatchLocalEmpirical(data, radius=1)
        >>> x = data[:2] + 1e-3 * torch.randn(2, 1, 8, 8)
        >>> torch.allclose(D(x, 1e-3), data[:2].double().to(x.dtype), atol=1e-5)   # tiny noise: the patch's own image
        True
        >>> D(x, 1e4).sub(data.mean(0)).abs().max().item() < 1e-3                   # huge noise: the mean image
        True
    """

    translation_equivariant = False

    def __init__(
        self,
        data: Tensor,
        radius: int,
        *,
        cond: Conditions | None = None,
        conditioner_radius: float | None = None,
        temperature: float = 0.1,
        equivariant: bool = False,
        dtype: torch.dtype = torch.float64,
        max_elements: int = 2**24,
    ) -> None:
        where = "PatchLocalEmpirical"
        data = check_image(data, where, "data")
        if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
            raise fail(where, f"`radius` is {describe(radius)}, expected an int >= 0 (the patch radius R).",
                       "patches are (2R + 1) x (2R + 1) pixels; R = 0 is a pixel-wise denoiser.")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise fail(where, f"`dtype` is {dtype!r}, expected a floating torch.dtype.")
        if isinstance(max_elements, bool) or not isinstance(max_elements, int) or max_elements < 1:
            raise fail(where, f"`max_elements` is {max_elements!r}, expected a positive int.")
        if not isinstance(equivariant, bool):
            raise fail(where, f"`equivariant` is {describe(equivariant)}, expected True or False.")
        N, C, H, W = data.shape
        if radius > max(H, W) - 1:
            raise fail(where, f"`radius` = {radius} is beyond the {H} x {W} images: radius max(H, W) - 1 = "
                       f"{max(H, W) - 1} already makes every patch the whole image; expected 0 <= radius <= "
                       f"{max(H, W) - 1}.", f"pass radius={max(H, W) - 1} (the same machine, without the padding).")
        P0 = 2 * radius + 1
        check_elements(N * C * P0 * P0 * H * W, MAX_ELEMENTS, where,
                       f"the training patches [N, C (2R + 1)**2, H W] = [{N}, {C * P0 * P0}, {H * W}]",
                       "use fewer training images or a smaller radius", limit_name=_LIMIT)
        self.shape = (C, H, W)
        self.receptive_radius = radius
        self.equivariant = bool(equivariant)
        self.dtype = dtype
        self.max_elements = max_elements
        self.data = data.detach().to(dtype)
        P = 2 * radius + 1
        self._patches = F.unfold(self.data, P, padding=radius)  # [N, C P^2, HW]
        self._centres = self.data.reshape(N, C, H * W)
        self._train_desc: Tensor | None = None
        self.cond_radius: float | None = None
        if cond is not None or conditioner_radius is not None:
            if cond is None or conditioner_radius is None:
                raise fail(where, "the conditional variant needs both `cond` (training conditions) and "
                           "`conditioner_radius`.", "pass both, or neither for the unconditional machine.")
            if not isinstance(cond, Conditions):
                raise fail(where, f"`cond` is {describe(cond)}, expected Conditions with one set per training image.")
            cond.check_batch(N, where, device=data.device)
            if isinstance(conditioner_radius, bool) or not isinstance(conditioner_radius, (int, float)) \
                    or not conditioner_radius >= 0 or not math.isfinite(conditioner_radius):
                raise fail(where, f"`conditioner_radius` is {conditioner_radius!r}, expected a finite number >= 0.")
            if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                    or not (math.isfinite(temperature) and temperature > 0):
                raise fail(where, f"`temperature` is {describe(temperature)}, expected a finite number > 0.",
                           "the descriptor term is |phi - phi'|**2 / (2 temperature**2): an infinite temperature "
                           "would ignore the conditions, a zero one divides by zero.")
            self.cond_radius = float(conditioner_radius)
            self.conditioner_radius = math.ceil(self.cond_radius)
            self.temperature = float(temperature)
            self.attr_dim = cond.attr_dim
            self._train_desc = self.descriptors(cond)  # [N, E, HW]

    def __repr__(self) -> str:
        kind = "equivariant" if self.equivariant else "location-specific"
        extra = "" if self.cond_radius is None else f", conditioner_radius={self.cond_radius}"
        return (f"PatchLocalEmpirical(N={self.data.shape[0]}, shape={self.shape}, radius={self.receptive_radius}, "
                f"{kind}{extra})")

    # ------------------------------------------------------------------ conditioning
    def descriptors(self, cond: Conditions | None, batch: int | None = None) -> Tensor:
        r"""``[B, E, H W]`` the per-pixel conditioner descriptors ``phi_l(c)`` (module docstring), ``E = 3 + A``.

        ``cond=None`` (or empty) gives zeros: no conditioner near any pixel.
        """
        where = "PatchLocalEmpirical.descriptors"
        if self.cond_radius is None:
            raise fail(where, "this machine is unconditional (built without `cond`).")
        if cond is not None and not isinstance(cond, Conditions):
            raise fail(where, f"`cond` is {describe(cond)}, expected Conditions or None.")
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
            raise fail(where, f"`batch` is {describe(batch)}, expected None or an int >= 1.")
        _, H, W = self.shape
        A0 = self.attr_dim or 0
        B0 = batch if batch is not None else (1 if cond is None else cond.batch_size)
        check_elements(B0 * max(1, 0 if cond is None else cond.num_slots) * (3 + A0) * H * W, MAX_ELEMENTS, where,
                       f"the descriptors of {B0} sets on {H} x {W}", "use smaller batches", limit_name=_LIMIT)
        A = self.attr_dim or 0
        dt, dev = self.dtype, self.data.device
        if cond is None or cond.num_slots == 0:
            B = batch if batch is not None else (1 if cond is None else cond.batch_size)
            return torch.zeros(B, 3 + A, H * W, dtype=dt, device=dev)
        if cond.attr_dim != self.attr_dim:
            raise fail(where, f"`cond` has attribute length {cond.attr_dim}, but the training conditions have "
                       f"{self.attr_dim}.", "condition on the same kind of objects the machine was built with.")
        r = self.cond_radius
        pos = cond.pos.to(dev, dt)
        rows = torch.arange(H, dtype=dt, device=dev).view(1, 1, H, 1)
        cols = torch.arange(W, dtype=dt, device=dev).view(1, 1, 1, W)
        dr = pos[..., 0, None, None] - rows  # [B, K, H, W]
        dc = pos[..., 1, None, None] - cols
        near = (torch.maximum(dr.abs(), dc.abs()) <= r) & cond.valid.to(dev)[:, :, None, None]
        w = near.to(dt)
        feats = [w.sum(1), (w * dr).sum(1) / (r + 1), (w * dc).sum(1) / (r + 1)]
        out = torch.stack(feats, 1)  # [B, 3, H, W]
        if A:
            assert cond.attr is not None
            out = torch.cat([out, torch.einsum("bkhw,bka->bahw", w, cond.attr.to(dev, dt))], 1)
        return out.reshape(out.shape[0], 3 + A, H * W)

    # ------------------------------------------------------------------ the denoiser
    def denoise(self, x: Tensor, sigma: Tensor | float, cond: Conditions | None = None) -> Tensor:
        r"""``D(x, sigma, cond)`` for ``x [B, C, H, W]``: the posterior mean of each centre pixel given its patch.

        Returns ``[B, C, H, W]`` in ``x``'s dtype. ``cond`` is used by the conditional variant (``None``
        means no conditioner anywhere); the unconditional machine ignores it.
        """
        where = "PatchLocalEmpirical"
        x = check_image(x, where)
        if tuple(x.shape[1:]) != self.shape:
            raise fail(where, f"`x` has image shape {tuple(x.shape[1:])}, expected {self.shape} (the training "
                       "images' shape).")
        B = x.shape[0]
        s = as_sigma(sigma, B, where, like=x).to(self.dtype)
        if cond is not None and not isinstance(cond, Conditions):
            raise fail(where, f"`cond` is {describe(cond)}, expected Conditions or None.")
        if cond is not None:
            cond.check_batch(B, where, device=x.device)
        C, H, W = self.shape
        R = self.receptive_radius
        xq = x.to(self.dtype)
        Q = F.unfold(xq, 2 * R + 1, padding=R)  # [B, C P^2, L]
        cond_term: _CondTerm | None = None
        if self._train_desc is not None:
            qd = self.descriptors(cond, batch=B)  # [B, E, L]
            cond_term = (qd, self._train_desc, 1.0 / (2 * self.temperature**2))
        inv2s2 = 1.0 / (2 * s**2)  # [B]
        out = (self._equivariant(Q, inv2s2, cond_term) if self.equivariant
               else self._location_specific(Q, inv2s2, cond_term))
        return out.reshape(B, C, H, W).to(x.dtype)

    def _location_specific(self, Q: Tensor, inv2s2: Tensor, cond_term: _CondTerm | None) -> Tensor:
        B, _, L = Q.shape
        Y = self._patches  # [N, D, L]
        N = Y.shape[0]
        out = Q.new_zeros(B, self.shape[0], L)
        step = max(1, self.max_elements // max(1, B * N * max(1, Y.shape[1] // 8)))
        for l0 in range(0, L, step):
            sl = slice(l0, min(L, l0 + step))
            q, y = Q[:, :, sl], Y[:, :, sl]  # [B, D, l], [N, D, l]
            d2 = (q.pow(2).sum(1)[:, None] + y.pow(2).sum(1)[None] - 2 * torch.einsum("bdl,ndl->bnl", q, y))
            logits = -d2.clamp_min(0) * inv2s2.view(B, 1, 1)
            if cond_term is not None:
                qd, td, scale = cond_term
                e2 = (qd[:, None, :, sl] - td[None, :, :, sl]).pow(2).sum(2)  # [B, N, l]
                logits = logits - scale * e2
            w = torch.softmax(logits, dim=1)  # over n
            out[:, :, sl] = torch.einsum("bnl,ncl->bcl", w, self._centres[:, :, sl])
        return out

    def _equivariant(self, Q: Tensor, inv2s2: Tensor, cond_term: _CondTerm | None) -> Tensor:
        B, Dp, L = Q.shape
        C, H, W = self.shape
        R = self.receptive_radius
        Y = self._patches.permute(1, 0, 2).reshape(Dp, -1)  # [D, N L] pool of all patches
        centres = self._centres.permute(1, 0, 2).reshape(C, -1)  # [C, N L]
        NL = Y.shape[1]
        # m_l: window entries of query location l that lie inside the image
        ones = torch.ones(1, C, H, W, dtype=Q.dtype, device=Q.device)
        M = F.unfold(ones, 2 * R + 1, padding=R)[0]  # [D, L]
        out = Q.new_zeros(B, C, L)
        step = max(1, self.max_elements // max(1, B * NL))
        Ysq = Y.pow(2)
        for l0 in range(0, L, step):
            sl = slice(l0, min(L, l0 + step))
            q, m = Q[:, :, sl], M[:, sl]  # [B, D, l], [D, l]
            d2 = ((q.pow(2) * m).sum(1)[:, :, None] + (m.T @ Ysq)[None] - 2 * torch.einsum("bdl,dk->blk", q * m, Y))
            logits = -d2.clamp_min(0) * inv2s2.view(B, 1, 1)  # [B, l, N L]
            if cond_term is not None:
                qd, td, scale = cond_term  # [B, E, L], [N, E, L]
                tdf = td.permute(1, 0, 2).reshape(td.shape[1], -1)  # [E, N L]
                qq = qd[:, :, sl]
                e2 = qq.pow(2).sum(1)[:, :, None] + tdf.pow(2).sum(0)[None, None] - 2 * torch.einsum(
                    "bel,ek->blk", qq, tdf)
                logits = logits - scale * e2.clamp_min(0)
            w = torch.softmax(logits, dim=2)
            out[:, :, sl] = torch.einsum("blk,ck->bcl", w, centres)
        return out

    def __call__(self, x: Tensor, sigma: Tensor | float, cond: Conditions | None = None) -> Tensor:
        return self.denoise(x, sigma, cond)

    def score(self, x: Tensor, sigma: Tensor | float, cond: Conditions | None = None) -> Tensor:
        """``(D(x, sigma, cond) - x) / sigma**2`` (:func:`~localscore.denoisers.tweedie`), ``[B, C, H, W]``."""
        x = check_image(x, "PatchLocalEmpirical.score")
        s = as_sigma(sigma, x.shape[0], "PatchLocalEmpirical.score", like=x)
        return tweedie(self.denoise(x, s, cond), x, s)

    def sample(self, n: int | Conditions, *, steps: int = 32, sigma_min: float = 0.01, sigma_max: float = 20.0,
               generator: torch.Generator | None = None) -> Tensor:
        r"""Draw images with Heun's probability-flow sampler on a Karras grid.

        Starts from ``sigma_max * z`` and runs :func:`localscore.sampling.sample_heun` over
        ``karras_sigmas(steps, sigma_min, sigma_max)``. Any localscore sampler works on this denoiser
        directly; this is a shortcut.

        Args:
            n: number of images, or a ``Conditions`` batch (one image per set; conditional variant).
            steps: number of grid steps.
            sigma_min: the grid's smallest positive noise level.
            sigma_max: the grid's largest noise level (the initial noise's scale).
            generator: source of the initial noise.

        Returns:
            ``[B, C, H, W]`` in the machine's dtype.
        """
        from .sampling import sample_heun
        from .schedules import karras_sigmas

        where = "PatchLocalEmpirical.sample"
        cond = n if isinstance(n, Conditions) else None
        if cond is None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise fail(where, f"`n` is {describe(n)}, expected a positive int or a Conditions batch.")
        if cond is not None and self.cond_radius is None:
            raise fail(where, "`n` is a Conditions batch, but this machine is unconditional (built without "
                       "`cond`), so the conditions would be ignored; expected an int.",
                       "pass the number of images, or build the machine with training conditions.")
        if generator is not None and (not isinstance(generator, torch.Generator) or generator.device.type != "cpu"):
            raise fail(where, f"`generator` is {describe(generator)}, expected a CPU torch.Generator or None "
                       "(the initial noise is drawn on the CPU).")
        B = cond.batch_size if cond is not None else int(n)  # type: ignore[arg-type]
        C, H, W = self.shape
        check_elements(B * C * H * W, MAX_ELEMENTS, where, f"the samples [B, C, H, W] = [{B}, {C}, {H}, {W}]",
                       "draw fewer images per call", limit_name=_LIMIT)
        sig = karras_sigmas(steps, sigma_min, sigma_max, dtype=self.dtype, device=self.data.device)
        z = torch.randn((B, *self.shape), generator=generator, dtype=self.dtype, device="cpu").to(self.data.device)
        return sample_heun(self, z * sig[0], sig, cond)
