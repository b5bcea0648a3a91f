r"""The evaluation engine of a composition: jobs, batching and chunking, the crop plan.

The engine evaluates the denoisers a :class:`~localscore.compose.Composition` needs and hands their outputs
to the combination formula (:mod:`localscore.compose.combination`). A *job* is one denoiser evaluation on
some images; jobs of one network with joinable conditioner sets share calls when batched, and every call is
chunked to ``max_batch`` images and ``max_pixels`` pixels. The *crop plan* lists, for the ``crop`` strategy,
the box each (component, image) pair must be evaluated on; *windows* (``crop_size``) are fixed-size crops
centred on each component's conditioner, where the background is evaluated on the same crop.

Everything here is an implementation detail of :mod:`localscore.compose`; the names are private.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor

from .._checks import check_flag, vouch
from .._errors import LocalScoreError, describe, fail
from ..conditions import Conditions, ConditionSet
from ..denoisers import BoundDenoiser, call_denoiser, conditioner_radius, receptive_radius
from .combination import Term, combine, combine_crops

__all__: list[str] = []

CROP_GAIN = 0.5  # auto crops when the crops hold at most this fraction of the pixels of full passes

Target = tuple[Any, ConditionSet | None, bool]  # (network, its conditioner set tiled to B or None, bound?)
Entry = tuple[int, ...]  # (j, b, r0, r1, c0, c1, n0, n1, m0, m1), see _CropPlan
Decl = tuple[int | None, int | None, str | None]  # (receptive radius, conditioner radius, crop blocker)


# --------------------------------------------------------------------------------------------- parts and jobs
@dataclass
class Parts:
    """What the engine evaluates: the background and components of a composition, and the memory budget.

    ``hosts`` keeps the positions and validity of bound components' conditions read back to the host (see
    :func:`host_cond`), per conditions object.
    """

    background: Any
    components: list[Any]
    max_batch: int | None
    max_pixels: int | None
    hosts: dict[int, tuple[Conditions, list[list[list[float]]], list[list[bool]]]] = field(default_factory=dict)


@dataclass
class _Job:
    """One denoiser evaluation: ``fn(x, s, cond)``, grouped with others of the same key."""

    key: tuple[Any, ...]
    fn: Any
    x: Tensor
    s: Tensor
    cond: ConditionSet | None
    name: str


def target(d: Any, B: int, device: torch.device) -> Target:
    """``(network, conditioner set tiled to B or None, bound?)`` for a denoiser (any bound one: objects, prompts)."""
    if isinstance(d, BoundDenoiser):
        return d.inner, d.conditions_for(B, device), True
    return d, None, False


def crop_blocker(d: Any) -> str | None:
    """Why network ``d`` cannot be evaluated on crops (``None`` if nothing says it cannot).

    Walks the ``inner`` chain: a network that declares ``translation_equivariant = False`` (coordinate
    channels, absolute position embeddings, an analytic oracle defined on one image shape), or a bound
    denoiser (its conditions are in full-image coordinates), is never cropped.
    """
    seen: set[int] = set()
    obj = d
    while obj is not None and id(obj) not in seen:
        seen.add(id(obj))
        if getattr(obj, "translation_equivariant", None) is False:
            shape = getattr(obj, "shape", None)
            fixed = (f" (it is defined on a fixed image shape {tuple(shape)})"
                     if isinstance(shape, tuple) and all(isinstance(v, int) for v in shape) else "")
            return f"{type(obj).__name__} declares translation_equivariant = False{fixed}"
        if isinstance(obj, BoundDenoiser):
            return "it wraps a bound denoiser whose conditions are in full-image coordinates"
        obj = getattr(obj, "inner", None)
    return None


def group_key(fn: Any, cond: ConditionSet | None, extra: tuple[Any, ...] = ()) -> tuple[Any, ...]:
    """Jobs of one key share calls: the same network, and conditioner sets that ``type(cond).cat`` joins."""
    if cond is None:
        return (id(fn), "none", *extra)
    return (id(fn), "cond", type(cond), getattr(cond, "attr_dim", None), *extra)


def chunks(n: int, per_item_pixels: int, max_batch: int | None, max_pixels: int | None) -> list[slice]:
    """Slices of ``n`` items, each at most ``max_batch`` items and ``max_pixels`` pixels (at least one item)."""
    size = n
    if max_batch is not None:
        size = min(size, max_batch)
    if max_pixels is not None:
        size = min(size, max(1, max_pixels // max(1, per_item_pixels)))
    size = max(1, size)
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def run_jobs(jobs: list[_Job], where: str, *, merge: bool, max_batch: int | None,
             max_pixels: int | None) -> list[Tensor]:
    """Evaluate every job; with ``merge``, jobs of the same key share calls (concatenated batches)."""
    outs: list[Tensor | None] = [None] * len(jobs)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, job in enumerate(jobs):
        key = job.key if merge else (i,)
        groups.setdefault(key, []).append(i)
    for idx in groups.values():
        first = jobs[idx[0]]
        if len(idx) == 1:
            x, s, cond = first.x, first.s, first.cond
        else:
            x = torch.cat([jobs[i].x for i in idx])
            s = torch.cat([jobs[i].s for i in idx])
            conds = [jobs[i].cond for i in idx]
            cond = None if first.cond is None else type(first.cond).cat([c for c in conds if c is not None])
        pix = x.shape[-1] * x.shape[-2]
        parts = []
        pieces = chunks(x.shape[0], pix, max_batch, max_pixels)
        for sl in pieces:
            xc, sc, cc = (x, s, cond) if len(pieces) == 1 else (x[sl], s[sl], None if cond is None else cond[sl])
            vouch(xc, sc)  # images, crops and noise levels taken from the checked inputs
            parts.append(call_denoiser(first.fn, xc, sc, cc, where, first.name))
        y = parts[0] if len(parts) == 1 else torch.cat(parts)
        start = 0
        for i in idx:
            m = jobs[i].x.shape[0]
            outs[i] = y[start : start + m]
            start += m
    return [o for o in outs if o is not None]


def host_cond(parts: Parts, d: Any, B: int) -> tuple[list[list[list[float]]], list[list[bool]]] | None:
    """Positions and validity of a bound denoiser's conditions tiled to ``B`` images, as Python lists.

    Read back once per conditions object (conditions are immutable) and kept; ``None`` if ``d`` is not bound.
    """
    c = d.cond if isinstance(d, BoundDenoiser) and isinstance(d.cond, Conditions) else None
    if c is None:  # unbound, or a set without positions (prompts): no effect boxes from positions
        return None
    hit = parts.hosts.get(id(c))
    if hit is None or hit[0] is not c:
        Bc, K = c.batch_size, c.num_slots
        flat = torch.cat([c.pos.detach().reshape(-1).double(), c.valid.reshape(-1).double()]).tolist()
        pos = [[flat[2 * (b * K + k) : 2 * (b * K + k) + 2] for k in range(K)] for b in range(Bc)]
        valid = [[flat[2 * Bc * K + b * K + k] != 0 for k in range(K)] for b in range(Bc)]
        hit = (c, pos, valid)
        parts.hosts[id(c)] = hit
    _, pos, valid = hit
    Bc = len(pos)
    return [pos[b % Bc] for b in range(B)], [valid[b % Bc] for b in range(B)]


# --------------------------------------------------------------------------------------------- full images
def eval_full(x: Tensor, s: Tensor, coef: Tensor, masks: list[Tensor | None], act: list[list[bool]],
              targets: list[Target], parts: Parts, where: str, index: dict[int, Tensor] | None, *,
              merge: bool) -> Tensor:
    """The ``sequential`` (``merge=False``) and ``batched`` strategies: every denoiser on full images.

    Component ``j`` runs on the images it acts on (``act[b][j]``); ``index`` caches the index tensors of a
    static composition.
    """
    B = x.shape[0]
    fn_bg, c_bg, _ = target(parts.background, B, x.device)
    jobs = [_Job(group_key(fn_bg, c_bg), fn_bg, x, s, c_bg, "background")]
    used: list[tuple[int, Tensor | None]] = []
    for j, (fn, c, _) in enumerate(targets):
        rows = [b for b in range(B) if act[b][j]]
        if not rows:
            continue
        if len(rows) == B:
            jobs.append(_Job(group_key(fn, c), fn, x, s, c, f"components[{j}]"))
            used.append((j, None))
            continue
        sel = index.get(j) if index is not None else None
        if sel is None:
            sel = torch.tensor(rows, dtype=torch.long, device=x.device)
            if index is not None:
                index[j] = sel
        jobs.append(_Job(group_key(fn, c), fn, x[sel], s[sel], None if c is None else c[sel], f"components[{j}]"))
        used.append((j, sel))
    outs = run_jobs(jobs, where, merge=merge, max_batch=parts.max_batch, max_pixels=parts.max_pixels)
    terms = [Term(d_j, coef[:, j] if idx is None else coef[idx, j], masks[j], idx)
             for (j, idx), d_j in zip(used, outs[1:])]
    return combine(outs[0], terms)


# --------------------------------------------------------------------------------------------- the crop plan
@dataclass
class _CropGroup:
    """The crops of one network, laid out on the device: what :func:`eval_crop` gathers and pastes.

    ``N`` crops of ``h x w`` pixels: crop ``e`` is component ``jj[e]`` of image ``bi[e]``, read from rows
    ``rows[e]`` and columns ``cols[e]`` of the image, and pasted back where ``inside[e]`` (its effect box).
    """

    key: tuple[Any, ...]
    fn: Any
    jj: Tensor  # [N]
    bi: Tensor  # [N]
    rows: Tensor  # [N, h]
    cols: Tensor  # [N, w]
    inside: Tensor  # [N, h, w] bool
    cond: Conditions | None  # the crops' conditions, positions shifted into crop coordinates


@dataclass
class CropPlan:
    """Every crop of a composition: one entry per (component, image) with a non-empty effect box.

    Entries hold ``(j, b, r0, r1, c0, c1, n0, n1, m0, m1)``: the component, the image, the inclusive effect
    box ``S`` and the inclusive box ``S`` dilated by the receptive radius and clipped to the image.
    ``sizes`` (the entries grouped by network, with one crop size per group) and ``groups`` (their layout
    on the device) are built on first use, once per plan (and kept with a cached plan).
    """

    entries: list[Entry]
    sizes: dict[tuple[Any, ...], tuple[tuple[int, int], list[Entry]]] | None = None
    groups: list[_CropGroup] | None = None


def declarations(targets: list[Target]) -> dict[int, Decl]:
    """The declarations of each distinct network, read once (bound components share their network's)."""
    decl: dict[int, Decl] = {}
    for fn, _, _ in targets:
        if id(fn) not in decl:
            decl[id(fn)] = (receptive_radius(fn), conditioner_radius(fn), crop_blocker(fn))
    return decl


def _active(act: list[list[bool]], j: int) -> bool:
    return any(row[j] for row in act)


def _radii(decl: dict[int, Decl], targets: list[Target], act: list[list[bool]], parts: Parts, where: str,
           strict: bool) -> list[int] | None:
    """The receptive radius of each component; ``None`` (or an error, when ``strict``) if one cannot be cropped."""
    radii: list[int] = []
    for j, (fn, _, _) in enumerate(targets):
        R, _, blocker = decl[id(fn)]
        active = _active(act, j)
        if R is None and active:
            if strict:
                raise fail(where, f"strategy 'crop' needs the receptive radius of components[{j}] "
                           f"({describe(parts.components[j])}), which declares none.",
                           "set an int `receptive_radius` attribute on the network (output pixel i depends "
                           "only on input pixels within that Chebyshev distance), or use strategy='batched'.")
            return None
        radii.append(0 if R is None else int(R))
        if active and blocker is not None:
            if strict:
                raise fail(where, f"strategy 'crop' cannot evaluate components[{j}] on crops: {blocker}.",
                           "use strategy='batched' (or 'auto', which only crops where it is exact).")
            return None
    return radii


def _mask_boxes(masks: list[Tensor | None], x: Tensor) -> dict[tuple[int, int], list[int]]:
    """Effect boxes from the masks: first and last non-zero row and column, all masks at once (one read-back)."""
    B, _, H, W = x.shape
    boxes: dict[tuple[int, int], list[int]] = {}
    with_mask = [j for j, m in enumerate(masks) if m is not None]
    if not with_mask:
        return boxes
    big = max(H, W) + 1
    stacked = torch.stack([m.ne(0).any(dim=1).expand(B, H, W) for m in masks if m is not None])  # [nm, B, H, W]
    rows, cols = stacked.any(dim=3), stacked.any(dim=2)
    ar_h = torch.arange(H, device=x.device)
    ar_w = torch.arange(W, device=x.device)
    mb = torch.stack([torch.where(rows, ar_h, big).amin(-1), torch.where(rows, ar_h, -1).amax(-1),
                      torch.where(cols, ar_w, big).amin(-1), torch.where(cols, ar_w, -1).amax(-1)], -1)
    for i, row in enumerate(mb.tolist()):
        for b in range(B):
            boxes[(with_mask[i], b)] = row[b]
    return boxes


def _points_box(pos: list[list[float]], valid: list[bool], r: int) -> list[int]:
    """The inclusive box ``pos +- r`` (Chebyshev) around the valid positions (empty: ``[1, 0, 1, 0]``)."""
    pts = [p for p, v in zip(pos, valid) if v]
    if not pts:
        return [1, 0, 1, 0]
    return [math.floor(min(p[0] for p in pts) - r), math.ceil(max(p[0] for p in pts) + r),
            math.floor(min(p[1] for p in pts) - r), math.ceil(max(p[1] for p in pts) + r)]


def _intersect(old: list[int] | None, box: list[int]) -> list[int]:
    if old is None:
        return box
    return [max(old[0], box[0]), min(old[1], box[1]), max(old[2], box[2]), min(old[3], box[3])]


def _unbounded(j: int, bound: bool, r: int | None, where: str) -> LocalScoreError:
    reason = ("it is not a bound conditional denoiser (bind(D, c))" if not bound else
              "it declares no `conditioner_radius`" if r is None else
              "the background is not the unconditional model of the same network (bind(D, cond.drop_all()))")
    return fail(where, f"strategy 'crop' needs a bounded support for components[{j}], but it has no mask and "
                f"{reason}.", "give the component a mask, declare `conditioner_radius` on the network, or use "
                "strategy='batched'.")


def _background_unconditional(parts: Parts, B: int, device: torch.device) -> tuple[Any, bool]:
    """``(network of the background, whether it is that network's unconditional model)``."""
    fn_bg, c_bg, _ = target(parts.background, B, device)
    bg_host = host_cond(parts, parts.background, B)
    return fn_bg, c_bg is None or bg_host is None or not any(any(v) for v in bg_host[1])


def _add_cond_boxes(boxes: dict[tuple[int, int], list[int]], decl: dict[int, Decl], targets: list[Target],
                    act: list[list[bool]], parts: Parts, x: Tensor, where: str, strict: bool) -> bool:
    """Effect boxes from the conditioner radius: valid positions +- r (Chebyshev), for bind(D, c) over the
    unconditional background of the same D, intersected with the mask boxes. False if a component has none."""
    B = x.shape[0]
    fn_bg, bg_uncond = _background_unconditional(parts, B, x.device)
    for j, (fn, c, bound) in enumerate(targets):
        if not _active(act, j):
            continue
        r = decl[id(fn)][1] if bound else None
        host = host_cond(parts, parts.components[j], B)
        if r is None or not (bound and fn is fn_bg and bg_uncond) or c is None or host is None:
            if (j, 0) in boxes:
                continue
            if strict:
                raise _unbounded(j, bound, r, where)
            return False
        pos, valid = host
        for b in range(B):
            boxes[(j, b)] = _intersect(boxes.get((j, b)), _points_box(pos[b], valid[b], r))
    return True


def _entries(radii: list[int], boxes: dict[tuple[int, int], list[int]], act: list[list[bool]], H: int,
             W: int) -> list[Entry]:
    """The plan's entries: each active pair's effect box clipped to the image, and dilated by its radius."""
    entries: list[Entry] = []
    for j, R in enumerate(radii):
        for b, row in enumerate(act):
            if not row[j]:
                continue
            r0, r1, c0, c1 = boxes[(j, b)]
            r0, r1, c0, c1 = max(r0, 0), min(r1, H - 1), max(c0, 0), min(c1, W - 1)
            if r0 > r1 or c0 > c1:
                continue
            entries.append((j, b, r0, r1, c0, c1, max(r0 - R, 0), min(r1 + R, H - 1), max(c0 - R, 0),
                            min(c1 + R, W - 1)))
    return entries


def crop_plan(x: Tensor, masks: list[Tensor | None], act: list[list[bool]], targets: list[Target], parts: Parts,
              where: str, *, strict: bool) -> CropPlan | None:
    """The crops of every active (component, image) pair; ``None`` if some component cannot be cropped
    (an error instead, when ``strict``)."""
    decl = declarations(targets)
    radii = _radii(decl, targets, act, parts, where, strict)
    if radii is None:
        return None
    boxes = _mask_boxes(masks, x)
    if not _add_cond_boxes(boxes, decl, targets, act, parts, x, where, strict):
        return None
    return CropPlan(_entries(radii, boxes, act, x.shape[-2], x.shape[-1]))


def crop_sizes(plan: CropPlan, targets: list[Target]) -> dict[tuple[Any, ...], tuple[tuple[int, int], list[Entry]]]:
    """Entries grouped by network, with one crop size per group (the largest needed): one call each.

    Computed once per plan and kept with it.
    """
    if plan.sizes is not None:
        return plan.sizes
    groups: dict[tuple[Any, ...], tuple[tuple[int, int], list[Entry]]] = {}
    for e in plan.entries:
        j = e[0]
        key = group_key(targets[j][0], targets[j][1])
        (h, w), lst = groups.get(key, ((0, 0), []))
        lst.append(e)
        groups[key] = ((max(h, e[7] - e[6] + 1), max(w, e[9] - e[8] + 1)), lst)
    plan.sizes = groups
    return groups


def crop_pixels(plan: CropPlan, targets: list[Target]) -> int:
    """The pixels the plan's crops hold (what ``auto`` compares with full passes)."""
    return sum(len(entries) * h * w for (h, w), entries in crop_sizes(plan, targets).values())


def _crop_conditions(entries: list[Entry], targets: list[Target], bi: Tensor, top: Tensor, left: Tensor,
                     dev: torch.device) -> Conditions:
    """The conditions of a group's crops: each crop's component's set, positions shifted into the crop."""
    comps = sorted({e[0] for e in entries})
    local = {j: i for i, j in enumerate(comps)}
    conds = [cast(Conditions, targets[j][1]) for j in comps]  # a group with conditions: "cond" in its key
    K = max(c.num_slots for c in conds)
    conds = [c.pad_to(K) for c in conds]
    li = torch.tensor([local[e[0]] for e in entries], device=dev)
    pos = torch.stack([c.pos for c in conds])[li, bi]  # [N, K, 2]
    valid = torch.stack([c.valid for c in conds])[li, bi]
    attrs = [c.attr for c in conds]
    attr = None if attrs[0] is None else torch.stack(cast(list[Tensor], attrs))[li, bi]
    shift = torch.stack([top, left], dim=1).to(pos.dtype)[:, None, :]
    return Conditions._derived(pos - shift, attr, valid)  # finite positions, shifted: still valid


def crop_layout(plan: CropPlan, targets: list[Target], H: int, W: int, dev: torch.device) -> list[_CropGroup]:
    """The plan's crops on the device, one group per network (built once per plan)."""
    if plan.groups is not None:
        return plan.groups
    out: list[_CropGroup] = []
    for key, ((h, w), entries) in crop_sizes(plan, targets).items():
        # Crops placed inside the image: start at the needed box, moved in where it would overflow.
        rows_meta = [(e[0], e[1], e[2], e[3], e[4], e[5], min(e[6], H - h), min(e[8], W - w)) for e in entries]
        meta = torch.tensor(rows_meta, device=dev)  # [N, 8]
        jj, bi, box, top, left = meta[:, 0], meta[:, 1], meta[:, 2:6], meta[:, 6], meta[:, 7]
        rows = top[:, None] + torch.arange(h, device=dev)  # [N, h]
        cols = left[:, None] + torch.arange(w, device=dev)  # [N, w]
        r3, c3 = rows[:, :, None], cols[:, None, :]
        inside = ((r3 >= box[:, 0, None, None]) & (r3 <= box[:, 1, None, None])
                  & (c3 >= box[:, 2, None, None]) & (c3 <= box[:, 3, None, None]))  # [N, h, w]
        fn = targets[entries[0][0]][0]
        cc = _crop_conditions(entries, targets, bi, top, left, dev) if key[1] == "cond" else None
        out.append(_CropGroup((*key, h, w), fn, jj, bi, rows, cols, inside, cc))
    plan.groups = out
    return out


def _stacked_masks(masks: list[Tensor | None], B: int, H: int, W: int, x: Tensor) -> Tensor | None:
    """The masks as one ``[n, B, Cm, H, W]`` tensor in ``x``'s dtype (ones for a component without a mask)."""
    if all(m is None for m in masks):
        return None
    cm = max(m.shape[1] for m in masks if m is not None)
    one = torch.ones(1, dtype=x.dtype, device=x.device).expand(B, cm, H, W)
    return torch.stack([one if m is None else m.to(x.dtype).expand(B, cm, H, W) for m in masks])


def eval_crop(x: Tensor, s: Tensor, coef: Tensor, masks: list[Tensor | None], targets: list[Target],
              plan: CropPlan, parts: Parts, where: str) -> Tensor:
    """The ``crop`` strategy: the background on full images, each component on its crops, pasted back."""
    B, _, H, W = x.shape
    fn_bg, c_bg, _ = target(parts.background, B, x.device)
    jobs: list[_Job] = [_Job(("bg",), fn_bg, x, s, c_bg, "background")]
    layout = crop_layout(plan, targets, H, W, x.device)
    for g in layout:
        crops = x[g.bi[:, None, None], :, g.rows[:, :, None], g.cols[:, None, :]].permute(0, 3, 1, 2)  # N C h w
        jobs.append(_Job(g.key, g.fn, crops.contiguous(), s[g.bi], g.cond, "components"))
    outs = run_jobs(jobs, where, merge=False, max_batch=parts.max_batch, max_pixels=parts.max_pixels)
    stacked = _stacked_masks(masks, B, H, W, x)
    pastes = []
    for g, y in zip(layout, outs[1:]):
        b3, r3, c3 = g.bi[:, None, None], g.rows[:, :, None], g.cols[:, None, :]
        a = coef[g.bi, g.jj].view(-1, 1, 1, 1) * g.inside[..., None].to(x.dtype)  # [N, h, w, 1]
        if stacked is not None:
            a = a * stacked[g.jj[:, None, None], b3, :, r3, c3]  # [N, h, w, 1 or C]
        pastes.append((y, g.bi, g.rows, g.cols, a))
    return combine_crops(outs[0], pastes)


# --------------------------------------------------------------------------------------------- windows
def check_windowable(background: Any, components: Sequence[Any], where: str) -> None:
    """Raise unless every component is ``bind(D, c)`` with one slot per image, over a background of the same ``D``."""
    if not isinstance(background, BoundDenoiser):
        raise fail(where, f"`crop_size` needs the background to be the unconditional model bind(D, cond.drop_all()) "
                   f"of the components' network; got {describe(background)}.",
                   "build the composition with projective_from or masked_from, or drop crop_size.")
    for j, c in enumerate(components):
        if not (isinstance(c, BoundDenoiser) and isinstance(c.cond, Conditions) and c.cond.num_slots == 1
                and c.inner is background.inner):
            raise fail(where, f"`crop_size` needs every component to be bind(D, c_j) of the background's network "
                       f"with one conditioner per image (a singleton); components[{j}] is {describe(c)}.",
                       "build the composition with projective_from or masked_from, or drop crop_size.")


def eval_windows(x: Tensor, s: Tensor, coef: Tensor, masks: list[Tensor | None], act: list[list[bool]],
                 targets: list[Target], parts: Parts, size: int, where: str) -> Tensor:
    """Windows (``crop_size``): each active (component, image) pair on the ``size x size`` window centred on
    its conditioner (clamped to the image), the background on the same window; the background once on the
    full images. All windows and their backgrounds go in one batch (chunked)."""
    B, _, H, W = x.shape
    S, dev = size, x.device
    if S > H or S > W:
        raise fail(where, f"`crop_size` = {S} is larger than the image {(H, W)}.", "use a smaller crop_size.")
    n = len(targets)
    fn_bg, c_bg, _ = target(parts.background, B, dev)
    jobs = [_Job(("bg",), fn_bg, x, s, c_bg, "background")]
    if all(all(row) for row in act):  # slot-major: pair e = j * B + b
        jj, bi = torch.arange(n, device=dev).repeat_interleave(B), torch.arange(B, device=dev).repeat(n)
    else:
        pairs = [(j, b) for j in range(n) for b in range(B) if act[b][j]]
        jj = torch.tensor([p[0] for p in pairs], dtype=torch.long, device=dev)
        bi = torch.tensor([p[1] for p in pairs], dtype=torch.long, device=dev)
    if jj.numel() == 0:
        return run_jobs(jobs, where, merge=False, max_batch=parts.max_batch, max_pixels=parts.max_pixels)[0]
    conds = [cast(Conditions, t[1]) for t in targets]  # singletons, checked at construction
    pos = torch.stack([c.pos for c in conds])[jj, bi]  # [N, 1, 2]
    valid = torch.stack([c.valid for c in conds])[jj, bi]
    attrs = [c.attr for c in conds]
    attr = None if attrs[0] is None else torch.stack(cast(list[Tensor], attrs))[jj, bi]
    top = (pos[:, 0].round() - (S // 2)).long()  # [N, 2]
    top[:, 0] = top[:, 0].clamp(0, H - S)
    top[:, 1] = top[:, 1].clamp(0, W - S)
    ar = torch.arange(S, device=dev)
    rows, cols = top[:, :1] + ar, top[:, 1:] + ar  # [N, S]
    crops = x[bi[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # [N, C, S, S]
    shifted = Conditions._derived(pos - top[:, None, :].to(pos.dtype), attr, valid)
    fn = targets[0][0]
    key = group_key(fn, shifted, (S, S))
    jobs.append(_Job(key, fn, crops, s[bi], shifted, "components"))
    jobs.append(_Job(key, fn, crops, s[bi], shifted.drop_all(), "background on the windows"))
    d_bg, y, ref = run_jobs(jobs, where, merge=True, max_batch=parts.max_batch, max_pixels=parts.max_pixels)
    a = coef[bi, jj].view(-1, 1, 1, 1)
    stacked = _stacked_masks(masks, B, H, W, x)
    if stacked is not None:
        inside = torch.zeros(jj.shape[0], H, W, dtype=torch.bool, device=dev)
        inside[torch.arange(jj.shape[0], device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]] = True
        spill = (stacked[jj, bi].ne(0).any(1) & ~inside).flatten(1).any(1)  # [N]: mask beyond the window
        check_flag(spill, lambda: fail(where, f"a component's mask does not fit in its {S}x{S} window.",
                                       "use a larger crop (crop_size)."))
        a = a * stacked[jj[:, None, None], bi[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # [N, S, S, Cm]
    return combine_crops(d_bg, [(y, bi, rows, cols, a)], reference=[ref])

