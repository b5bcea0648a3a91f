r"""Influence maps of a conditioner set: how much each conditioner changes a model's output, per position.

One definition for every conditioner set (objects in :class:`~localscore.Conditions`, the token groups
of :class:`~localscore.adapters.diffusers.PromptConditions`, or any set with the slot operations),
used by :func:`~localscore.metrics.conditional_locality` and by the diffusers adapter. With
``y = decoder(fn(x, sigma, cond))`` (``decoder`` optional) of shape ``[B, C', h, w]``, the influence of
slot ``k`` on position ``i`` is a **squared** Euclidean norm over the channels ``c``:

* by ablation (:func:`ablation_influence`): ``I[b, k, i] = sum_c (y(cond)[b, c, i] - y(cond without k)[b, c, i])^2``;
* by gradient (:func:`gradient_influence`): ``I[b, k, i] = ||d y[b, :, i] / d theta_k||_F^2``, the squared
  Frobenius norm of the Jacobian block of the slot's coordinates ``theta_k`` (an object's position and
  attributes; a concept's token embeddings).

Squared norms add over channels and directions (the probes' estimate is unbiased for them), and they are
what :func:`~localscore.metrics.locality_index` weighs: the share of a conditioner's influence inside a
region. Absent slots (``valid`` False: padding, an ablated concept) have zero influence.

What a conditioner set provides (the :class:`~localscore.conditions.ConditionSet` operations):
``batch_size``, ``num_slots``, ``valid [B, K]``, ``select(k)``, ``ablate(k)`` (slot ``k`` absent, ``K``
kept), ``drop_all()``, and ``cat(items)`` on its type (to batch the variants in one model call). The
gradient also needs the continuous coordinates: ``coordinates()`` (a tuple of tensors with leading axis
``B``), ``with_coordinates(values)`` (the same set at those values, differentiably) and
``coordinate_masks(k)`` (bool masks of the entries that belong to slot ``k``); for ``Conditions`` they are
the positions ``[B, K, 2]`` and attributes ``[B, K, A]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from .._checks import as_sigma, check_image, check_model
from .._errors import describe, fail
from ..conditions import Conditions, ConditionSet

__all__ = ["ablation_influence", "gradient_influence", "math_attention"]

InfluenceMode = Literal["ablate", "only"]
"""``"ablate"``: what making slot ``k`` absent changes; ``"only"``: what slot ``k`` alone adds to the background."""

_SLOT_OPS = ("batch_size", "num_slots", "valid", "select", "drop_all")


def math_attention() -> Any:
    """A context manager that makes ``scaled_dot_product_attention`` use its math kernel.

    The fused kernels (flash, memory-efficient) have no forward-mode derivative, so ``torch.func.jvp``
    through an attention model (a diffusers UNet, for one) fails with them; :func:`gradient_influence`
    uses this internally, and other forward-mode tools (e.g. :func:`~localscore.metrics.pixel_locality`
    with ``method="probes"``) can be wrapped in it.

    Examples:
        >>> import torch
        >>> with math_attention():
        ...     q = torch.randn(1, 1, 3, 2)
        ...     torch.func.jvp(lambda q: torch.nn.functional.scaled_dot_product_attention(q, q, q),
        ...                    (q,), (torch.ones_like(q),))[1].shape
        torch.Size([1, 1, 3, 2])
    """
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - torch < 2.3
        return torch.backends.cuda.sdp_kernel(enable_flash=False, enable_math=True, enable_mem_efficient=False)
    return sdpa_kernel(SDPBackend.MATH)


# ----------------------------------------------------------------------------- the conditioner-set operations
def _check_set(cond: Any, where: str) -> ConditionSet:
    missing = [a for a in _SLOT_OPS if not hasattr(cond, a)]
    if cond is None or missing:
        raise fail(where, f"argument `cond` is {describe(cond)}, expected a conditioner set (localscore.Conditions, "
                   f"a PromptConditions, or any set with {', '.join(_SLOT_OPS)}, ablate and cat).",
                   "build one with `Conditions.from_lists(...)`; there is no influence without conditioners.")
    return cond


def _ablate(cond: ConditionSet, k: int) -> ConditionSet:
    """Slot ``k`` absent, ``K`` kept: ``cond.ablate(k)``."""
    ablate = getattr(cond, "ablate", None)
    if not callable(ablate):
        raise fail("ablation_influence", f"the conditioner set {type(cond).__name__} has no `ablate(k)`.",
                   "implement ablate (slot k absent, K kept) on the set.")
    return ablate(k)


def _cat(items: Sequence[ConditionSet]) -> ConditionSet:
    """``type(items[0]).cat(items)``: batches of one conditioner-set type along ``B``."""
    if len(items) == 1:
        return items[0]
    cat = getattr(type(items[0]), "cat", None)
    if cat is None:
        raise fail("influence", f"the conditioner set {type(items[0]).__name__} has no `cat(items)`.",
                   "implement cat (concatenate batches) on the set.")
    return cat(list(items))


def _for_batch(cond: ConditionSet, B: int, device: torch.device, where: str) -> ConditionSet:
    """The set tiled to ``B`` images (its batch size must divide ``B``)."""
    dev = getattr(cond, "device", device)
    if dev != device:
        raise fail(where, f"`cond` is on {dev} but x is on {device}.", "move it with `cond.to(x.device)`.")
    Bc = int(cond.batch_size)
    if Bc == B:
        return cond
    if B % Bc != 0:
        raise fail(where, f"`cond` has B = {Bc} conditioner sets but x has {B} images; expected B = {B}, 1, or a "
                   "divisor.", "give one conditioner set per image, or a single one for all.")
    return _cat([cond] * (B // Bc))


def _coordinates(cond: Any, dtype: torch.dtype) -> tuple[Tensor, ...]:
    if isinstance(cond, Conditions) and not hasattr(cond, "coordinates"):
        values: tuple[Tensor, ...] = (cond.pos,) if cond.attr is None else (cond.pos, cond.attr)
    else:
        values = tuple(cond.coordinates())
    return tuple(v.detach().to(dtype) if v.is_floating_point() else v.detach() for v in values)


def _with_coordinates(cond: Any, values: Sequence[Tensor]) -> Any:
    if isinstance(cond, Conditions) and not hasattr(cond, "with_coordinates"):
        return Conditions(values[0], values[1] if len(values) > 1 else None, cond.valid)
    return cond.with_coordinates(tuple(values))


def _coordinate_masks(cond: Any, k: int) -> tuple[Tensor, ...]:
    if isinstance(cond, Conditions) and not hasattr(cond, "coordinate_masks"):
        slot = torch.zeros_like(cond.valid)
        slot[:, k] = True
        masks = [slot[..., None].expand_as(cond.pos)]
        if cond.attr is not None:
            masks.append(slot[..., None].expand_as(cond.attr))
        return tuple(masks)
    return tuple(cond.coordinate_masks(k))


def _apply(fn: Callable[..., Tensor], decoder: Callable[[Tensor], Tensor] | None, x: Tensor, s: Tensor,
           cond: ConditionSet, where: str) -> Tensor:
    out = fn(x, s, cond)
    if decoder is not None:
        out = _check_output(out, x.shape[0], where, "fn")
        out = decoder(out)
    return _check_output(out, x.shape[0], where, "decoder" if decoder is not None else "fn")


def _check_output(out: Any, B: int, where: str, name: str) -> Tensor:
    if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[0] != B:
        raise fail(where, f"`{name}` returned {describe(out)}, expected [B = {B}, C', h, w].",
                   "pass a denoiser, a feature map (e.g. adapters.diffusers.FeatureMap), or a decoder of either.")
    return out


def _check_common(fn: Callable[..., Tensor], x: Any, sigma: Any, cond: Any,
                  where: str) -> tuple[Tensor, Tensor, ConditionSet]:
    if not callable(fn):
        raise fail(where, f"argument `fn` is {describe(fn)}, expected a callable fn(x, sigma, cond).")
    x = check_image(x, where)
    check_model(fn, x, where, "fn")
    s = as_sigma(sigma, x.shape[0], where, like=x)
    cond = _for_batch(_check_set(cond, where), x.shape[0], x.device, where)
    if cond.num_slots == 0:
        raise fail(where, "the conditioner set has no slot (K = 0): there is no conditioner to measure.",
                   "pass the conditioners (objects, concepts) whose influence you want.")
    return x, s, cond


# ----------------------------------------------------------------------------- by ablation
def _ablation(fn: Callable[..., Tensor], x: Tensor, s: Tensor, cond: ConditionSet, mode: str,
              decoder: Callable[[Tensor], Tensor] | None, max_batch: int, where: str) -> Tensor:
    """``[B, K, h, w]``: the squared change per position; the reference is re-evaluated in every batched call,
    so the difference is not polluted by batch-size-dependent kernels."""
    B, K = x.shape[0], int(cond.num_slots)
    ref = cond if mode == "ablate" else cond.drop_all()
    maps: list[Tensor] = []
    if max_batch < 2 * B:      # one call per set, each of batch B
        y0 = _apply(fn, decoder, x, s, ref, where)
        for k in range(K):
            yk = _apply(fn, decoder, x, s, _ablate(cond, k) if mode == "ablate" else cond.select(k), where)
            maps.append((y0 - yk).pow(2).sum(1))
        out = torch.stack(maps, 1)
        return out * cond.valid[:, :, None, None].to(out.dtype)
    per = max_batch // B - 1
    for k0 in range(0, K, per):
        ks = range(k0, min(K, k0 + per))
        variants = [_ablate(cond, k) if mode == "ablate" else cond.select(k) for k in ks]
        n = len(variants) + 1
        y = _apply(fn, decoder, x.repeat(n, 1, 1, 1), s.repeat(n), _cat([ref, *variants]), where)
        y = y.view(n, B, *y.shape[1:])
        diff = (y[:1] - y[1:]).pow(2).sum(2)  # [n - 1, B, h, w]
        maps.extend(diff.unbind(0))
    out = torch.stack(maps, 1)
    return out * cond.valid[:, :, None, None].to(out.dtype)


def ablation_influence(
    fn: Callable[..., Tensor],
    x: Tensor,
    sigma: Tensor | float,
    cond: ConditionSet,
    *,
    mode: InfluenceMode = "ablate",
    decoder: Callable[[Tensor], Tensor] | None = None,
    max_batch: int = 64,
) -> Tensor:
    r"""Influence maps by ablation, ``[B, K, h, w]``: the squared output change when a conditioner is absent.

    With ``y(c) = decoder(fn(x, sigma, c))`` (``decoder`` optional, for example a VAE decoder to measure in
    pixels):

    * ``mode="ablate"``: ``I[b, k, i] = sum_c (y(cond)[b, c, i] - y(cond.ablate(k))[b, c, i])^2``, what
      making conditioner ``k`` absent changes;
    * ``mode="only"``: ``I[b, k, i] = sum_c (y(cond.select(k))[b, c, i] - y(cond.drop_all())[b, c, i])^2``,
      what conditioner ``k`` alone adds to the background (the component of a projective composition).

    ``I[b, k]`` is zero where slot ``k`` is absent (``valid[b, k]`` False). The reference and up to
    ``max_batch // B - 1`` variants go to the model in one call (the set's ``cat``; the reference is
    evaluated again in every call, so each difference is taken within one batch); with ``max_batch < 2 B``
    every set is a call of its own (batch ``B``), which avoids batch-size-dependent round-off altogether.

    Args:
        fn: ``fn(x, sigma, cond) -> [B, C', h, w]``: a denoiser, or a feature map of one.
        x: ``[B, C, H, W]`` noisy images (or latents).
        sigma: ``[B]`` or a float.
        cond: a conditioner set with ``K`` slots and batch ``B`` (or a divisor of ``B``: tiled).
        mode: ``"ablate"`` or ``"only"``.
        decoder: optional map applied to ``fn``'s output before the difference.
        max_batch: the largest batch passed to ``fn`` (at least ``B``).

    Returns:
        ``[B, K, h, w]`` non-negative influence, in ``x``'s dtype.

    Examples:
        >>> import torch
        >>> from localscore import Conditions
        >>> def D(x, s, c):              # object k, when present, adds 2 at column 2 k + 1
        ...     v = c.pad_to(2).valid.to(x.dtype)
        ...     return x + 2 * torch.stack([0 * v[:, 0], v[:, 0], 0 * v[:, 1], v[:, 1]], 1)[:, None, None, :]
        >>> c = Conditions.from_lists([[(0.0, 1.0), (0.0, 3.0)]])
        >>> ablation_influence(D, torch.zeros(1, 1, 1, 4), 1.0, c)[0, :, 0].tolist()
        [[0.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 4.0]]
    """
    where = "ablation_influence"
    x, s, cond = _check_common(fn, x, sigma, cond, where)
    if mode not in ("ablate", "only"):
        raise fail(where, f"`mode` is {mode!r}, expected 'ablate' or 'only'.")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise fail(where, f"`max_batch` is {max_batch!r}, expected a positive int.")
    return _ablation(fn, x, s, cond, mode, decoder, max_batch, where).to(x.dtype)


# ----------------------------------------------------------------------------- by gradient
def _directions(values: tuple[Tensor, ...], masks: tuple[Tensor, ...], probes: int | None,
                generator: torch.Generator | None) -> tuple[int, Callable[[int], tuple[Tensor, ...]]]:
    """The tangent directions of one slot, as ``(count, make)`` (built one chunk at a time): basis vectors of
    its coordinates (``probes is None``; direction ``n`` is the ``n``-th entry of the slot in every image at
    once), or Rademacher vectors on its entries (drawn in order from ``generator``)."""
    if probes is not None:
        def probe(n: int) -> tuple[Tensor, ...]:
            return tuple((torch.randint(0, 2, v.shape, generator=generator, device=v.device).to(v.dtype) * 2 - 1)
                         * m.to(v.dtype) for v, m in zip(values, masks, strict=True))
        return probes, probe
    B = values[0].shape[0]
    entries: list[list[tuple[int, int]]] = [[] for _ in range(B)]   # per image: (coordinate tensor, flat index)
    for t, m in enumerate(masks):
        flat = m.reshape(B, -1)
        for b in range(B):
            entries[b].extend((t, int(i)) for i in flat[b].nonzero().flatten().tolist())

    def basis(n: int) -> tuple[Tensor, ...]:
        vs = [torch.zeros_like(v).reshape(B, -1) for v in values]
        for b in range(B):
            if n < len(entries[b]):
                t, i = entries[b][n]
                vs[t][b, i] = 1
        return tuple(v.reshape(values[t].shape) for t, v in enumerate(vs))

    return max((len(e) for e in entries), default=0), basis


def _jvp_sq(fn: Callable[..., Tensor], decoder: Callable[[Tensor], Tensor] | None, x: Tensor, s: Tensor,
            cond: ConditionSet, values: tuple[Tensor, ...], dirs: list[tuple[Tensor, ...]], where: str) -> Tensor:
    """``sum_c (J v_n)^2``, ``[n, B, h, w]``, for ``n`` directions in one forward-mode call of batch ``n B``.

    The images of a batch are independent, so stacking ``n`` copies of the batch and feeding direction ``n``
    to copy ``n`` gives the ``n`` Jacobian-vector products in one pass."""
    n, B = len(dirs), x.shape[0]
    tiled = _cat([cond] * n)
    xr, sr = x.repeat(n, 1, 1, 1), s.repeat(n)

    def f(*vals: Tensor) -> Tensor:
        return _apply(fn, decoder, xr, sr, _with_coordinates(tiled, vals), where)

    primals = tuple(torch.cat([v] * n) for v in values)
    tangents = tuple(torch.cat([d[t] for d in dirs]) for t in range(len(values)))
    jv = torch.func.jvp(f, primals, tangents)[1]
    return jv.pow(2).sum(1).reshape(n, B, *jv.shape[2:])


def _gradient(fn: Callable[..., Tensor], x: Tensor, s: Tensor, cond: ConditionSet, probes: int | None,
              generator: torch.Generator | None, decoder: Callable[[Tensor], Tensor] | None, chunk: int, where: str,
              *, zero_absent: bool = True) -> Tensor:
    """``[B, K, h, w]``: ``sum_n |J_k v_n|^2`` over the slot's basis directions, or its mean over probes."""
    values = _coordinates(cond, x.dtype)
    maps: list[Tensor | None] = []
    with math_attention():
        for k in range(int(cond.num_slots)):
            if zero_absent and not bool(cond.valid[:, k].any()):
                maps.append(None)                       # absent everywhere: zero, no derivative to take
                continue
            count, make = _directions(values, _coordinate_masks(cond, k), probes, generator)
            acc: Tensor | None = None
            for start in range(0, count, chunk):
                dirs = [make(n) for n in range(start, min(count, start + chunk))]
                sq = _jvp_sq(fn, decoder, x, s, cond, values, dirs, where).sum(0)
                acc = sq if acc is None else acc + sq
            if acc is not None and probes is not None:
                acc = acc / count
            maps.append(acc)
    like = next((m for m in maps if m is not None), None)
    if like is None:        # no slot present anywhere, or slots without coordinates: measure the shape once
        like = _apply(fn, decoder, x, s, cond, where).detach().pow(2).sum(1) * 0
    out = torch.stack([m if m is not None else torch.zeros_like(like) for m in maps], 1)
    if zero_absent:
        out = out * cond.valid[:, :, None, None].to(out.dtype)
    return out


def gradient_influence(
    fn: Callable[..., Tensor],
    x: Tensor,
    sigma: Tensor | float,
    cond: ConditionSet,
    *,
    probes: int | Literal["exact"] = "exact",
    generator: torch.Generator | None = None,
    decoder: Callable[[Tensor], Tensor] | None = None,
    chunk: int = 8,
) -> Tensor:
    r"""Influence maps by gradient, ``[B, K, h, w]``: the squared Frobenius norm of each slot's Jacobian block.

    With ``y(theta) = decoder(fn(x, sigma, cond at coordinates theta))`` and ``J_k[b, :, i]`` the Jacobian of
    ``y[b, :, i]`` with respect to the coordinates ``theta_k`` of slot ``k`` (an object's position and
    attributes; a concept's token embeddings, at the embeddings the model sees),

        ``I[b, k, i] = || J_k[b, :, i] ||_F^2 = sum_n sum_c (J_k v_n)[b, c, i]^2``

    over the basis vectors ``v_n`` of the slot's coordinates (``probes="exact"``: one forward-mode product
    per coordinate), or estimated from ``probes`` Rademacher vectors ``v_n`` on them
    (``E |J v|^2 = ||J||_F^2``): ``I ~ mean_n sum_c (J_k v_n)^2``. ``I[b, k]`` is zero where slot ``k`` is
    absent. ``chunk`` directions go in one ``torch.func.jvp`` call: the batch is stacked ``chunk`` times and
    copy ``n`` carries direction ``n``, which is exact because ``fn`` treats the images of a batch
    independently (diffusion models in eval mode do; a model with batch statistics does not). The products
    run under :func:`math_attention` (fused attention kernels have no forward-mode derivative). Run it under
    ``torch.no_grad()`` to keep no graph for the parameters.

    Args:
        fn: ``fn(x, sigma, cond) -> [B, C', h, w]`` (a denoiser or a feature map of one).
        x: ``[B, C, H, W]`` noisy images (or latents).
        sigma: ``[B]`` or a float.
        cond: a conditioner set with coordinates (see the module), ``K`` slots.
        probes: ``"exact"`` or the number of random probes per slot.
        generator: source of the random probes.
        decoder: optional map applied to ``fn``'s output.
        chunk: directions evaluated per batched forward-mode call (memory grows with it).

    Returns:
        ``[B, K, h, w]`` non-negative influence, in ``x``'s dtype.

    Examples:
        >>> import torch
        >>> from localscore import Conditions
        >>> D = lambda x, s, c: x * 0 + 3 * c.pos[:, :1, :1, None]      # depends on object 0's row only
        >>> c = Conditions.from_lists([[(1.0, 1.0), (2.0, 2.0)]])
        >>> gradient_influence(D, torch.zeros(1, 1, 2, 2), 1.0, c)[0, :, 0, 0].tolist()     # 3^2 and 0
        [9.0, 0.0]
    """
    where = "gradient_influence"
    x, s, cond = _check_common(fn, x, sigma, cond, where)
    exact = probes == "exact"
    if not exact and (isinstance(probes, bool) or not isinstance(probes, int) or probes < 1):
        raise fail(where, f"`probes` is {probes!r}, expected 'exact' or an int >= 1.")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise fail(where, f"`chunk` is {chunk!r}, expected an int >= 1 (directions per batched call).")
    n_probes = None if exact else int(probes)
    return _gradient(fn, x, s, cond, n_probes, generator, decoder, chunk, where).to(x.dtype)
