r"""Pixel locality and conditional locality of a denoiser, across noise levels.

* :func:`pixel_locality`: how a model's Jacobian mass spreads over input pixels around each output pixel
  (profile of mass within distance ``d``, effective radii, heat-map of the average local Jacobian).
* :func:`conditional_locality`: per-conditioner influence maps (by ablation and by gradient) and the
  conditional locality index.
* :func:`locality_index` and :func:`influence_radius`: pure functions on influence maps that other code
  (for example text-concept maps of a diffusers model) reuses.

Distances are ``"chebyshev"`` (``max(|dr|, |dc|)``, square neighbourhoods, the default and the metric of
declared receptive radii) or ``"euclidean"``; every result records which one it used. A disc of
Euclidean radius ``r`` lies inside the Chebyshev ball of radius ``r``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from .._checks import as_sigma, check_image, check_model, check_tensor
from .._errors import describe, fail
from ..conditions import Conditions
from ..denoisers import Denoiser, call_denoiser, receptive_radius, tweedie
from ..masks import distances
from .influence import _ablation, _gradient
from .jacobians import BandedJacobian, JacobianProbes, _check_radius, jacobian
from .results import ConditionalLocality, LocalityIndex, PixelLocality

__all__ = ["conditional_locality", "influence_radius", "locality_index", "pixel_locality"]

Metric = Literal["chebyshev", "euclidean"]
Target = Literal["denoiser", "score"]
RegionSpec = Tensor | float | int | Callable[..., Tensor] | None


# ----------------------------------------------------------------------------- shared helpers
def _check_metric(metric: Any, where: str) -> Metric:
    if metric not in ("chebyshev", "euclidean"):
        raise fail(where, f"`metric` is {metric!r}, expected 'chebyshev' or 'euclidean'.",
                   "declared receptive radii are Chebyshev distances; use metric='chebyshev' to compare with them.")
    return metric


def _sigma_list(sigma: Any, batch: int, where: str, like: Tensor) -> list[Tensor]:
    """A float, a ``[B]`` tensor, or a sequence of floats / ``[B]`` tensors -> list of ``[B]`` tensors."""
    if isinstance(sigma, (list, tuple)):
        if len(sigma) == 0:
            raise fail(where, "`sigma` is an empty list, expected at least one noise level.")
        return [as_sigma(s, batch, where, like=like, name=f"sigma[{n}]") for n, s in enumerate(sigma)]
    return [as_sigma(sigma, batch, where, like=like)]


def _check_cond(cond: Any, batch: int, device: torch.device, where: str, *, required: bool) -> Conditions | None:
    if cond is None:
        if required:
            raise fail(where, "`cond` is None, expected a Conditions batch with the conditioners to measure.",
                       "build one with `Conditions.from_lists(...)`, one set per image of `x`.")
        return None
    if not isinstance(cond, Conditions):
        raise fail(where, f"`cond` is {describe(cond)}, expected a localscore.Conditions or None.")
    return cond.check_batch(batch, where, device=device)


def _check_measurable(cond: Conditions, size: tuple[int, int], where: str) -> None:
    """Raise for a set with no valid conditioner, or a valid one off the image (its influence and radius would be
    undefined: NaN), naming the first such object."""
    H, W = size
    if cond.num_slots == 0 or not bool(cond.valid.any()):
        raise fail(where, f"`cond` holds no valid conditioner (K = {cond.num_slots}, counts "
                   f"{cond.counts().tolist()[:8]}): there is nothing to measure, and the result would be NaN.",
                   "pass the conditioners whose influence you want (at least one valid slot).")
    r, c = cond.pos[..., 0], cond.pos[..., 1]
    off = cond.valid & ((r < -0.5) | (r > H - 0.5) | (c < -0.5) | (c > W - 0.5))
    if bool(off.any()):
        b, k = (int(v) for v in off.nonzero()[0].tolist())
        raise fail(where, f"object {k} of image {b} is off the image: position {cond.pos[b, k].tolist()} outside "
                   f"the {H} x {W} pixel grid (rows and cols from -0.5 to H - 0.5, W - 0.5); its influence "
                   "radius and locality index would be NaN.",
                   "measure objects on the image: drop or mark it invalid (`cond.ablate(k)`), or check the "
                   "positions' units (pixels, (row, col)).")


def _canvas_distances(Dm: int, metric: Metric, device: torch.device) -> Tensor:
    """``[2Dm + 1, 2Dm + 1]`` long: the distance bin ``ceil(dist)`` of every offset from the centre."""
    off = torch.arange(-Dm, Dm + 1, device=device, dtype=torch.float64)
    r, c = off[:, None].abs(), off[None, :].abs()
    d = torch.maximum(r, c) if metric == "chebyshev" else torch.sqrt(r**2 + c**2)
    return torch.ceil(d - 1e-9).long()


def _profile(heat: Tensor, metric: Metric) -> tuple[Tensor, Tensor]:
    """``(distances [D + 1], profile [S, D + 1])`` from heat-maps ``[S, 2Dm + 1, 2Dm + 1]``."""
    Dm = heat.shape[-1] // 2
    bins = _canvas_distances(Dm, metric, heat.device).flatten()
    D = int(bins.max())
    hist = heat.new_zeros(heat.shape[0], D + 1)
    hist.scatter_add_(1, bins.expand(heat.shape[0], -1), heat.flatten(1))
    return torch.arange(D + 1), hist.cumsum(1).clamp(max=1.0)


def _heat_dense(M: Tensor) -> Tensor:
    """``M [B, H, W, H, W]`` squared masses -> heat-map ``[2Dm + 1, 2Dm + 1]``, ``Dm = max(H, W) - 1``."""
    H, W = M.shape[1:3]
    Dm = max(H, W) - 1
    side = 2 * Dm + 1
    tot = M.sum(dim=(3, 4))
    ok = tot > 0
    Mn = torch.where(ok[..., None, None], M / tot.clamp_min(1e-300)[..., None, None], torch.zeros_like(M))
    canvas = M.new_zeros(side * side)
    p = torch.arange(H, device=M.device)
    q = torch.arange(W, device=M.device)
    co = q[None, :] - q[:, None] + Dm  # [W (j), W (q)]
    for i in range(H):
        ro = p - i + Dm  # [H]
        idx = ro[None, :, None] * side + co[:, None, :]  # [W, H, W]
        canvas.index_add_(0, idx.flatten(), Mn[:, i].sum(0).flatten())
    return canvas.view(side, side) / ok.sum().clamp_min(1)


def _heat_banded(Jb: BandedJacobian, Dm: int) -> Tensor:
    """Heat-map of lower bounds: each pixel's window mass over (its window mass + the verified bound beyond it)."""
    M = Jb.values.detach().double().pow(2).sum(dim=(1, 4))  # [B, H, W, P, P]
    R = Jb.radius
    tot = M.sum(dim=(3, 4))
    ok = tot > 0
    # C' rows per output pixel, each with at most leak_bound beyond the window (verified): m_out <= C' bound^2
    slack = Jb.values.shape[1] * Jb.leak_bound().to(M.device).pow(2)  # [B]
    denom = (tot + slack.view(-1, 1, 1)).clamp_min(1e-300)
    Mn = torch.where(ok[..., None, None], M / denom[..., None, None], torch.zeros_like(M))
    small = Mn.sum(dim=(0, 1, 2)) / ok.sum().clamp_min(1)  # [P, P]
    side = 2 * Dm + 1
    canvas = M.new_zeros(side, side)
    e = min(R, Dm)
    canvas[Dm - e : Dm + e + 1, Dm - e : Dm + e + 1] = small[R - e : R + e + 1, R - e : R + e + 1]
    return canvas


def _heat_probes(pr: JacobianProbes, Dm: int) -> Tensor:
    M = pr.mass.detach().double()  # [B, N, H, W]
    H, W = M.shape[2:]
    tot = M.sum(dim=(2, 3))
    ok = tot > 0
    Mn = torch.where(ok[..., None, None], M / tot.clamp_min(1e-300)[..., None, None], torch.zeros_like(M))
    side = 2 * Dm + 1
    canvas = M.new_zeros(side, side)
    for n, (i, j) in enumerate(pr.pixels.tolist()):
        canvas[Dm - i : Dm - i + H, Dm - j : Dm - j + W] += Mn[:, n].sum(0)
    return canvas / ok.sum().clamp_min(1)


# ----------------------------------------------------------------------------- pixel locality
def pixel_locality(
    denoiser: Denoiser,
    x: Tensor,
    sigma: Tensor | float | Sequence[Tensor | float],
    cond: Conditions | None = None,
    *,
    method: Literal["auto", "dense", "colored", "probes"] = "auto",
    radius: int | None = None,
    metric: Metric = "chebyshev",
    quantiles: Sequence[float] = (0.5, 0.9, 0.99),
    target: Target = "denoiser",
    chunk_size: int | None = None,
    max_memory: int = 2 * 1024**3,
    n_rows: int = 32,
    generator: torch.Generator | None = None,
) -> PixelLocality:
    r"""The spread of a denoiser's (or its score's) Jacobian over input pixels, at one or several sigmas.

    For each noise level, with ``J = d D(x, sigma, cond) / d x`` (``target="denoiser"``) or
    ``J = (d D / d x - I) / sigma^2`` (``target="score"``, the Jacobian of ``s = (D - x) / sigma^2``),
    the mass of input pixel ``i + o`` for output pixel ``i`` is ``m_i(o) = sum_{c', c} J[c', i, c, i + o]^2``.
    Shares ``n_i(o) = m_i(o) / sum_o m_i(o)`` are averaged over output pixels and images into the
    heat-map, and ``profile[d] = sum_{dist(o) <= d} heat[o]``: see :class:`PixelLocality`.

    Jacobian ``method``: ``"dense"`` (exact, ``C H W`` VJPs), ``"colored"`` (the band of receptive radius
    ``radius``, verified; see :func:`~localscore.metrics.jacobian`), ``"probes"`` (exact rows at ``n_rows``
    random output pixels: an unbiased estimate of the average), or ``"auto"``: colored when a radius is given
    or declared by the model (``receptive_radius``) and its ``(2R + 1)^2`` window is smaller than the image,
    else dense when it fits ``max_memory``, else probes.

    What ``"colored"`` reports: it never sees the entries beyond the window, only the verified bound ``b``
    on every row's norm there (:meth:`~localscore.metrics.BandedJacobian.leak_bound`, ``10 rtol S``: about
    ``1e-3 S`` in float32, ``1e-9 S`` in float64). So it reports lower bounds, never a share of exactly 1 it
    did not verify: ``n_i(o) = m_i(o) / (sum_{o' in window} m_i(o') + C' b^2)`` for offsets in the window, the
    heat-map sums to ``1 - outside`` and ``profile[d] <= 1 - outside`` with ``outside = res.outside(R)``, the
    (mean) verified upper bound on the share of mass beyond ``R`` (about ``1e-6`` for a float32 network of
    unit scale, ``1e-18`` in float64). A map with more than the tolerance beyond ``R`` is not measured: the
    verification raises (measure it with ``method="dense"`` or ``"probes"``).

    Args:
        denoiser: ``D(x, sigma, cond) -> [B, C, H, W]``.
        x: ``[B, C, H, W]`` the point (for example a noisy sample at that sigma).
        sigma: a float, a ``[B]`` tensor, or a list of them (one result row per entry).
        cond: optional ``Conditions`` with ``B`` sets.
        method: see above.
        radius: the receptive radius for ``"colored"`` (default: the model's declared one).
        metric: ``"chebyshev"`` or ``"euclidean"``.
        quantiles: mass quantiles of the effective radii.
        target: ``"denoiser"`` or ``"score"``.
        chunk_size: passed to :func:`~localscore.metrics.jacobian`.
        max_memory: passed to :func:`~localscore.metrics.jacobian`.
        n_rows: passed to :func:`~localscore.metrics.jacobian`.
        generator: passed to :func:`~localscore.metrics.jacobian`.

    Returns:
        :class:`~localscore.metrics.PixelLocality`.

    Raises:
        LocalScoreError: bad arguments; with ``"colored"``, a map that depends on inputs beyond ``radius`` by
            more than the verification's tolerance (the message locates the dependence).

    Examples:
        >>> import torch
        >>> conv = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
        >>> with torch.no_grad():
        ...     _ = conv.weight.fill_(1.0)
        >>> D = lambda x, s, c=None: conv(x)
        >>> res = pixel_locality(D, torch.zeros(1, 1, 9, 9), [0.5, 2.0])
        >>> res.effective_radius[:, 1].tolist()      # 90 % of the mass within distance 1
        [1, 1]
        >>> round(res.profile[0, 0].item(), 4)       # own pixel: 1/9 inside, 1/6 at edges, 1/4 at corners
        0.1372
    """
    where = "pixel_locality"
    if not callable(denoiser):
        raise fail(where, f"`denoiser` is {describe(denoiser)}, expected a callable D(x, sigma, cond).")
    x = check_image(x, where).detach()
    check_model(denoiser, x, where)
    metric = _check_metric(metric, where)
    if radius is not None:
        _check_radius(radius, where)
    if method not in ("auto", "dense", "colored", "probes"):
        raise fail(where, f"`method` is {method!r}, expected 'auto', 'dense', 'colored' or 'probes'.")
    if target not in ("denoiser", "score"):
        raise fail(where, f"`target` is {target!r}, expected 'denoiser' or 'score'.")
    qs = tuple(float(q) for q in quantiles)
    if not qs or not all(0 < q <= 1 for q in qs):
        raise fail(where, f"`quantiles` is {quantiles!r}, expected values in (0, 1].")
    B, C, H, W = x.shape
    cond = _check_cond(cond, B, x.device, where, required=False)
    sig = _sigma_list(sigma, B, where, x)
    R = radius if radius is not None else receptive_radius(denoiser)
    chosen: str = method
    fits = B * (C * H * W) ** 2 * x.element_size() <= max_memory
    if method == "auto":
        P = None if R is None else 2 * R + 1
        if P is not None and (min(P, H) * min(P, W) < H * W or not fits):
            chosen = "colored"  # fewer products than dense
        elif fits:
            chosen = "dense"
        else:
            chosen = "probes"
    if chosen == "colored" and R is None:
        raise fail(where, "method='colored' needs a receptive radius, and the model declares none.",
                   "pass radius=R, or use method='dense' or 'probes'.")
    Dm = max(H, W) - 1
    heats = []
    for s in sig:
        def fn(z: Tensor, s: Tensor = s) -> Tensor:
            d = call_denoiser(denoiser, z, s, cond, where)
            return d if target == "denoiser" else tweedie(d, z, s)

        if chosen == "dense":
            J = jacobian(fn, x, chunk_size=chunk_size, max_memory=max_memory)
            if J.shape != (B, C, H, W, C, H, W):
                raise fail(where, f"the denoiser's Jacobian has shape {tuple(J.shape)}, expected "
                           f"{(B, C, H, W, C, H, W)}.")
            heats.append(_heat_dense(J.detach().double().pow(2).sum(dim=(1, 4))))
        elif chosen == "colored":
            Jb = jacobian(fn, x, method="colored", radius=R, chunk_size=chunk_size, max_memory=max_memory,
                          generator=generator)
            heats.append(_heat_banded(Jb, Dm))
        else:
            pr = jacobian(fn, x, method="probes", n_rows=n_rows, n_probes=1, chunk_size=chunk_size,
                          max_memory=max_memory, generator=generator)
            heats.append(_heat_probes(pr, Dm))
    heat = torch.stack(heats)
    dists, prof = _profile(heat, metric)
    last = torch.full((prof.shape[0],), len(dists) - 1, dtype=torch.long, device=prof.device)
    eff = torch.stack([torch.where((prof >= q - 1e-12).any(1), (prof >= q - 1e-12).double().argmax(1), last)
                       for q in qs], 1)
    return PixelLocality(
        sigmas=torch.stack([s[0] for s in sig]).detach().double().cpu(),
        distances=dists,
        profile=prof.cpu(),
        quantiles=qs,
        effective_radius=eff.cpu(),
        heatmap=heat.cpu(),
        metric=metric,
        method=chosen,
        target=target,
    )


# ----------------------------------------------------------------------------- influence maps -> indices
def _check_influence(influence: Any, where: str) -> Tensor:
    influence = check_tensor(influence, where, "influence")
    if influence.dim() != 4:
        raise fail(where, f"`influence` has shape {tuple(influence.shape)}, expected [B, K, H, W] (one "
                   "non-negative map per conditioner).")
    if not bool(torch.isfinite(influence).all()) or bool((influence < 0).any()):
        raise fail(where, "`influence` holds negative or non-finite values; expected finite values >= 0.",
                   "pass squared magnitudes (e.g. ||D(x, c) - D(x, c without j)||^2 per pixel).")
    return influence


def _regions(regions: RegionSpec, cond: Conditions | None, size: tuple[int, int], sigma: Tensor | None,
             metric: Metric, where: str) -> Tensor:
    if isinstance(regions, torch.Tensor):
        return regions
    if regions is None:
        raise fail(where, "no regions given.")
    if cond is None:
        raise fail(where, f"`regions` is {describe(regions)}, which needs the conditioners' positions, but "
                   "`cond` is None.", "pass cond=..., or a mask tensor [B, K, H, W] as `regions`.")
    if callable(regions):
        out = regions(cond, size, sigma=sigma)
        if not isinstance(out, torch.Tensor):
            raise fail(where, f"the `regions` rule returned {describe(out)}, expected a mask tensor [B, K, H, W].")
        return out
    if isinstance(regions, bool) or not isinstance(regions, (int, float)) or not regions >= 0:
        raise fail(where, f"`regions` is {describe(regions)}, expected a mask tensor [B, K, H, W], a radius >= 0, "
                   "or a mask rule (cond, size, sigma=None) -> [B, K, H, W].")
    return distances(cond, size, metric) <= float(regions)


def locality_index(
    influence: Tensor,
    regions: Tensor | float,
    *,
    cond: Conditions | None = None,
    metric: Metric = "chebyshev",
) -> LocalityIndex:
    r"""The share of each conditioner's influence inside its own region, and on the other objects' regions.

    ``inside[b, k] = sum_i I[b, k, i] m[b, k, i] / sum_i I[b, k, i]`` and
    ``on_others[b, k] = sum_i I[b, k, i] max_{k' != k} m[b, k', i] / sum_i I[b, k, i]``,
    averaged over the valid conditioners into ``index`` and ``on_others_mean`` (see :class:`LocalityIndex`).

    Args:
        influence: ``[B, K, H, W] >= 0``, one influence map per conditioner (any source: ablation,
            gradients, attention maps of text concepts).
        regions: ``[B, K, H, W]`` masks (bool, or floats in ``[0, 1]`` for soft regions), or a radius:
            then ``m[b, k, i] = dist(i, pos[b, k]) <= radius`` and ``cond`` is required.
        cond: the conditioners (their positions for a radius, their ``valid`` flags in any case).
        metric: distance of a radius region.

    Returns:
        :class:`~localscore.metrics.LocalityIndex`.

    Examples:
        >>> import torch
        >>> I = torch.zeros(1, 2, 1, 4); I[0, 0, 0, :2] = 1.0; I[0, 1, 0, 3] = 1.0; I[0, 1, 0, 0] = 1.0
        >>> m = torch.tensor([[[[1, 1, 0, 0]], [[0, 0, 1, 1]]]]).bool()
        >>> res = locality_index(I, m)
        >>> res.inside.tolist(), res.on_others.tolist(), res.index
        ([[1.0, 0.5]], [[0.0, 0.5]], 0.75)
    """
    where = "locality_index"
    influence = _check_influence(influence, where)
    metric = _check_metric(metric, where)
    B, K, H, W = influence.shape
    if cond is not None:
        if not isinstance(cond, Conditions):
            raise fail(where, f"`cond` is {describe(cond)}, expected Conditions or None.")
        if (cond.batch_size, cond.num_slots) != (B, K):
            raise fail(where, f"`cond` has B = {cond.batch_size}, K = {cond.num_slots}; `influence` has "
                       f"B = {B}, K = {K}.", "pass the conditioners the influence maps belong to.")
    if K == 0 or (cond is not None and not bool(cond.valid.any())):
        raise fail(where, f"no valid conditioner (K = {K} slots, none of them a real object): the index would be "
                   "the mean over nothing (NaN).",
                   "pass the influence maps of at least one valid conditioner.")
    m = _regions(regions, cond, (H, W), None, metric, where)
    if m.shape != influence.shape:
        raise fail(where, f"`regions` has shape {tuple(m.shape)}, expected {tuple(influence.shape)} like "
                   "`influence`.")
    if m.dtype == torch.bool:
        m = m.to(influence.dtype)
    elif not m.is_floating_point() or bool(((m < 0) | (m > 1)).any()):
        raise fail(where, "`regions` must be bool or hold values in [0, 1].")
    m = m.to(influence.dtype)
    valid_slot = cond.valid if cond is not None else torch.ones(B, K, dtype=torch.bool, device=influence.device)
    m = m * valid_slot[:, :, None, None].to(m.dtype)
    total = influence.sum(dim=(2, 3))
    valid = valid_slot & (total > 0)
    others = torch.zeros_like(m)
    for k in range(K):
        rest = torch.cat([m[:, :k], m[:, k + 1 :]], 1)
        if rest.shape[1]:
            others[:, k] = rest.amax(1)
    denom = total.clamp_min(torch.finfo(total.dtype).tiny)
    nan = torch.full_like(total, float("nan"))
    inside = torch.where(valid, (influence * m).sum(dim=(2, 3)) / denom, nan)
    on_others = torch.where(valid, (influence * others).sum(dim=(2, 3)) / denom, nan)
    index = float(inside[valid].mean()) if bool(valid.any()) else float("nan")
    on_mean = float(on_others[valid].mean()) if bool(valid.any()) else float("nan")
    return LocalityIndex(inside, on_others, valid, total, index, on_mean)


def influence_radius(influence: Tensor, cond: Conditions, *, quantile: float = 0.9,
                     metric: Metric = "chebyshev") -> Tensor:
    r"""``[B, K]``: the smallest distance from each conditioner holding ``quantile`` of its influence.

    ``r[b, k] = min{ d(i*) : sum_{i: d(i) <= d(i*)} I[b, k, i] >= quantile * sum_i I[b, k, i] }`` with
    ``d(i)`` the distance of pixel ``i`` to ``pos[b, k]``; NaN for padding slots or zero influence.

    Examples:
        >>> import torch
        >>> from localscore import Conditions
        >>> I = torch.zeros(1, 1, 1, 6); I[0, 0, 0, 1] = 1.0; I[0, 0, 0, 4] = 9.0
        >>> influence_radius(I, Conditions.from_lists([[(0.0, 1.0)]])).tolist()
        [[3.0]]
    """
    where = "influence_radius"
    influence = _check_influence(influence, where)
    metric = _check_metric(metric, where)
    if not 0 < quantile <= 1:
        raise fail(where, f"`quantile` is {quantile!r}, expected a value in (0, 1].")
    B, K, H, W = influence.shape
    if not isinstance(cond, Conditions) or (cond.batch_size, cond.num_slots) != (B, K):
        raise fail(where, f"`cond` is {describe(cond)}, expected Conditions with B = {B}, K = {K} like `influence`.")
    d = distances(cond.to(dtype=torch.float64), (H, W), metric).flatten(2)  # [B, K, HW]
    I = influence.double().flatten(2)
    d_fin = torch.where(torch.isfinite(d), d, torch.zeros_like(d))
    order = torch.argsort(d_fin, dim=2, stable=True)
    ds = torch.gather(d_fin, 2, order)
    cum = torch.gather(I, 2, order).cumsum(2)
    total = cum[..., -1:]
    hit = cum >= quantile * total * (1 - 1e-12)
    first = hit.double().argmax(2, keepdim=True)
    r = torch.gather(ds, 2, first)[..., 0]
    ok = cond.valid & (total[..., 0] > 0)
    return torch.where(ok, r, torch.full_like(r, float("nan")))


# ----------------------------------------------------------------------------- conditional locality
def conditional_locality(
    denoiser: Denoiser,
    x: Tensor,
    sigma: Tensor | float | Sequence[Tensor | float],
    cond: Conditions,
    *,
    methods: Sequence[Literal["ablation", "gradient"]] = ("ablation",),
    regions: RegionSpec = None,
    quantile: float = 0.9,
    metric: Metric = "chebyshev",
    max_batch: int = 64,
) -> ConditionalLocality:
    r"""Per-conditioner influence maps and the conditional locality index, at one or several sigmas.

    Influence of conditioner ``k`` on output pixel ``i`` (summed over output channels ``c``), the squared
    norms of :mod:`localscore.metrics.influence`:

    * ``"ablation"`` (:func:`~localscore.metrics.ablation_influence`):
      ``I[b, k, i] = sum_c (D(x, sigma, cond)[b, c, i] - D(x, sigma, cond \ k)[b, c, i])^2``,
      where ``cond \ k`` marks slot ``k`` invalid (the object is absent). Works for any model.
    * ``"gradient"`` (:func:`~localscore.metrics.gradient_influence`, exact):
      ``I[b, k, i] = sum_c sum_theta (d D[b, c, i] / d theta)^2`` over the position ``(row, col)`` and the
      attributes ``theta`` of conditioner ``k`` (forward-mode JVPs, ``max_batch // B`` per call). It is zero
      for models whose output is piecewise constant in positions (hard-edged renderings).

    Then per method: ``influence_radius`` (the smallest distance from ``pos[b, k]`` holding ``quantile`` of
    ``I[b, k]``) and :func:`locality_index` against ``regions``: a mask tensor ``[B, K, H, W]``, a radius, a
    mask rule ``rule(cond, (H, W), sigma=s)`` (e.g. :class:`localscore.masks.BoxRule`), or ``None``, in
    which case each conditioner's region is the ball of its own influence radius (so ``inside`` is at
    least ``quantile`` and the informative numbers are the radii and ``on_others``).

    Args:
        denoiser: ``D(x, sigma, cond)``.
        x: ``[B, C, H, W]``.
        sigma: a float, a ``[B]`` tensor, or a list of them.
        cond: ``Conditions`` with ``B`` sets and ``K`` slots.
        methods: any of ``"ablation"``, ``"gradient"``.
        regions: see above.
        quantile: for the influence radius.
        metric: ``"chebyshev"`` or ``"euclidean"``.
        max_batch: the largest batch passed to the denoiser (ablations and gradient directions are batched).

    Returns:
        :class:`~localscore.metrics.ConditionalLocality`.

    Examples:
        >>> import torch
        >>> from localscore import Conditions
        >>> from localscore.testing import LocalConvDenoiser
        >>> D = LocalConvDenoiser(1, radius=1, cond_radius=1.0)      # influence within 1 + 1 = 2
        >>> c = Conditions.from_lists([[(3.0, 3.0), (3.0, 12.0)]])
        >>> res = conditional_locality(D, torch.zeros(1, 1, 8, 16), [0.5, 5.0], c, regions=2.0)
        >>> res.index["ablation"].tolist(), res.on_others_mean["ablation"].tolist()
        ([1.0, 1.0], [0.0, 0.0])
    """
    where = "conditional_locality"
    if not callable(denoiser):
        raise fail(where, f"`denoiser` is {describe(denoiser)}, expected a callable D(x, sigma, cond).")
    x = check_image(x, where).detach()
    check_model(denoiser, x, where)
    B, _, H, W = x.shape
    c = _check_cond(cond, B, x.device, where, required=True)
    assert c is not None
    _check_measurable(c, (H, W), where)
    metric = _check_metric(metric, where)
    meths = tuple(methods)
    if not meths or any(m not in ("ablation", "gradient") for m in meths) or len(set(meths)) != len(meths):
        raise fail(where, f"`methods` is {methods!r}, expected a non-empty subset of ('ablation', 'gradient').")
    if not 0 < quantile <= 1:
        raise fail(where, f"`quantile` is {quantile!r}, expected a value in (0, 1].")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise fail(where, f"`max_batch` is {max_batch!r}, expected a positive int.")
    sig = _sigma_list(sigma, B, where, x)
    K = c.num_slots
    influence: dict[str, list[Tensor]] = {m: [] for m in meths}
    radii: dict[str, list[Tensor]] = {m: [] for m in meths}
    inside: dict[str, list[Tensor]] = {m: [] for m in meths}
    on_others: dict[str, list[Tensor]] = {m: [] for m in meths}
    index: dict[str, list[float]] = {m: [] for m in meths}
    on_mean: dict[str, list[float]] = {m: [] for m in meths}
    if isinstance(regions, torch.Tensor) and tuple(regions.shape) != (B, K, H, W):
        raise fail(where, f"`regions` has shape {tuple(regions.shape)}, expected [B, K, H, W] = {[B, K, H, W]}.")
    label = ("given" if isinstance(regions, torch.Tensor) else "influence_radius" if regions is None
             else f"radius={regions}" if isinstance(regions, (int, float)) else "rule")
    def fn(xx: Tensor, ss: Tensor, cc: Conditions) -> Tensor:
        return call_denoiser(denoiser, xx, ss, cc, where)

    for s in sig:
        for m in meths:
            I = (_ablation(fn, x, s, c, "ablate", None, max_batch, where) if m == "ablation"
                 else _gradient(fn, x, s, c, None, None, None, max(1, max_batch // B), where)).detach().double()
            r = influence_radius(I, c, quantile=quantile, metric=metric)
            if regions is None:
                d = distances(c.to(dtype=torch.float64), (H, W), metric)
                reg: Tensor = d <= torch.nan_to_num(r, nan=-1.0)[:, :, None, None]
            else:
                reg = _regions(regions, c, (H, W), s, metric, where)
            li = locality_index(I, reg, cond=c, metric=metric)
            influence[m].append(I.cpu())
            radii[m].append(r.cpu())
            inside[m].append(li.inside.cpu())
            on_others[m].append(li.on_others.cpu())
            index[m].append(li.index)
            on_mean[m].append(li.on_others_mean)
    return ConditionalLocality(
        sigmas=torch.stack([s[0] for s in sig]).detach().double().cpu(),
        positions=c.pos.detach().double().cpu(),
        valid=c.valid.cpu(),
        influence={m: torch.stack(v) for m, v in influence.items()},
        influence_radius={m: torch.stack(v) for m, v in radii.items()},
        inside={m: torch.stack(v) for m, v in inside.items()},
        on_others={m: torch.stack(v) for m, v in on_others.items()},
        index={m: torch.tensor(v, dtype=torch.float64) for m, v in index.items()},
        on_others_mean={m: torch.tensor(v, dtype=torch.float64) for m, v in on_mean.items()},
        quantile=float(quantile),
        regions=label,
        metric=metric,
    )

