r"""The :class:`Composition` operator: the specs, the engine and the combination formula put together."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, TypeVar

import torch
from torch import Tensor

from .._checks import as_sigma, check_image, check_model, checked_call
from .._errors import describe, fail
from ..conditions import Conditions
from ..denoisers import conditioner_radius, receptive_radius
from . import engine
from .specs import STRATEGIES, MaskSpec, MaskSpecs, Strategy, WeightSpec, WeightSpecs, check_windows

__all__ = ["Composition", "EvaluationOptions"]


class EvaluationOptions(TypedDict, total=False):
    """The evaluation options every constructor of :mod:`localscore.compose` accepts (keyword-only).

    They choose how a composition is evaluated, never what it computes (except ``crop_size``, a windowed
    evaluation; see :class:`Composition`, which documents each).

    Attributes:
        strategy: ``"auto"``, ``"sequential"``, ``"batched"`` or ``"crop"``.
        max_batch: at most this many images (or crops) per network call.
        max_pixels: at most this many ``batch * H * W`` pixels per network call.
        skip_empty: a bound component whose conditioner set is empty for an image contributes zero there.
        skip_inactive: evaluate a component only on the images where it acts.
        crop_size: evaluate each component, and the background, on a window of this side around its object.
    """

    strategy: Strategy
    max_batch: int | None
    max_pixels: int | None
    skip_empty: bool
    skip_inactive: bool
    crop_size: int | None


@dataclass
class _Static:
    """What a composition whose activity does not depend on sigma (number weights, no windows, no masks or
    static masks: see :attr:`MaskSpecs.static`) keeps per input batch, dtype and device (and image size, with
    masks), so that its calls read nothing back from the device.

    ``values`` (the number weights, ``skip_empty``) and ``refs`` (the background and components, the models
    and conditions they bind, the mask rule and its conditions) are what it was computed from: a call where
    one differs recomputes it. ``act[b][j]`` says whether component ``j`` acts on image ``b``.
    """

    values: tuple[Any, ...]
    refs: tuple[Any, ...]
    coef: Tensor  # [B, n]
    masks: list[Tensor | None]  # the n masks (None without masks)
    act: list[list[bool]]
    index: dict[int, Tensor]  # component -> the images it acts on, when not all
    choice: dict[tuple[Any, ...], tuple[str, engine.CropPlan | None]]  # (H, W, declarations) -> what "auto" picks
    plans: dict[tuple[Any, ...], engine.CropPlan | None]  # (H, W, declarations, strict) -> the crop plan


_Prepared = tuple[Tensor, list[Tensor | None], list[list[bool]], list[engine.Target], _Static | None]
"""What :meth:`Composition._prepare` returns: ``(coef [B, n], masks, act, targets, static)``."""

_T = TypeVar("_T")


def _positive_int(name: str, v: Any, where: str) -> None:
    if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
        raise fail(where, f"`{name}` is {v!r}, expected None or an int >= 1.")


class Composition:
    r"""A composed denoiser ``D_hat(x, sigma) = D_bg + sum_j a_j * (D_j - D_bg)`` (see the module doc).

    Line by line, for ``x [B, C, H, W]`` and ``sigma [B]``, :meth:`__call__` computes::

        w   = weights resolved at sigma                               # [B, n]
        on  = window_lo_j <= sigma <= window_hi_j                     # [B, n] bool (True without a window)
              and (bound component j has a valid conditioner in image b, when skip_empty)
        a_j = (w[:, j] * on[:, j]).view(B, 1, 1, 1) * m_j(sigma)      # m_j = 1 without masks
        D_hat = D_bg(x, sigma) + sum_j a_j * (D_j(x, sigma) - D_bg(x, sigma))

    The first three lines are the specs (:mod:`localscore.compose.specs`, checked once at construction), the
    last is the combination formula (:func:`localscore.compose.combination.combine`); the engine
    (:mod:`localscore.compose.engine`) evaluates the ``D``. A component with ``a_j = 0`` for an image is not
    evaluated for it (where the strategy allows, and with ``skip_inactive``) and adds exactly zero. The score
    of ``D_hat`` is ``s_bg + sum_j a_j (s_j - s_bg)``.

    Args:
        background: the denoiser ``D_bg`` (e.g. ``bind(D, cond.drop_all())``, the unconditional model).
        components: the denoisers ``D_j`` (e.g. ``bind(D, c_j)``), each called with ``cond=None``.
        weights: ``None`` (all ``1``); a number (all components); a tensor ``[K]`` (one per component),
            ``[B, K]`` or a scalar; a callable ``sigma [B] -> number, [B] or [B, K]``; or a list with one
            entry per component, each a number, a ``[B]`` tensor, or a callable ``sigma [B] -> number or
            [B]`` (e.g. a :class:`WeightSchedule`). Negative weights negate a component. Read at
            construction: assign ``comp.weights`` to change them (the values of a weight tensor may change
            in place).
        windows: ``None``; one ``(sigma_lo, sigma_hi)`` pair for all components; or a list of pairs (or
            ``None``), one per component. A component is on only for ``sigma_lo <= sigma <= sigma_hi``.
        masks: ``None`` (projective composition); a list with one mask per component, each a tensor
            ``[B or 1, 1 or C, H, W]`` (bool or soft), a callable ``sigma [B] -> `` such a tensor, or
            ``None``; a tensor ``[B or 1, K, H, W]`` (channel ``j`` is component ``j``'s mask); a callable
            ``sigma -> [B, K, H, W]``; or a mask rule of :mod:`localscore.masks` (``DiscRule``, ``BoxRule``,
            ``GaussianRule``) evaluated at every call on ``mask_cond``.
        mask_cond: the conditions a mask rule is placed with, ``K`` = number of components.
        strategy: ``"auto"``, ``"sequential"``, ``"batched"`` or ``"crop"`` (see below).
        max_batch: at most this many images (or crops) per network call (the memory budget).
        max_pixels: at most this many ``batch * H * W`` pixels per network call (the memory budget for
            mixed image and crop sizes).
        skip_empty: a bound component whose conditioner set is empty (all padding) for an image
            contributes exactly zero for that image; by the protocol its output equals the unconditional
            model's, so this is only a difference when the background is not unconditional.
        skip_inactive: evaluate component ``j`` only on the images where ``a_j`` is not all zero (default).
            When that depends on sigma or on masks it is read back to the host once per call; ``False``
            evaluates every component on every image and reads nothing back (a sync-free loop on an
            accelerator, at the price of the skipped evaluations).
        crop_size: ``None``, or a window side ``S``: component ``j`` of image ``b`` and the background are
            both evaluated on the ``S x S`` window centred on ``round(pos_j)`` (clamped to the image; the
            conditioner is shifted into it), and ``a_j * (D_j - D_bg)`` is pasted back on the window only:
            ``D_hat = D_bg + sum_j a_j * 1_window_j * (D_j[window_j] - D_bg[window_j])``. Needs components
            ``bind(D, c_j)`` with one conditioner per image over ``bind(D, cond.drop_all())``
            (:func:`projective_from`, :func:`masked_from`) and masks, if any, inside the windows (checked).
            It equals the full formula when the windows hold each mask's support dilated by ``D``'s receptive
            radius, and otherwise *defines* the windowed local form of any model (what
            :func:`localscore.nn.localize` computes). All windows and their backgrounds go in one batch.

    Strategies (all compute the formula above):

    * ``sequential``: one call per denoiser that has work (background and each component).
    * ``batched``: denoisers that wrap the same network (``bind(D, c)`` of one ``D``) are stacked into one
      batch of ``(n + 1) B`` images with concatenated conditions and evaluated in one call (chunked to
      ``max_batch`` / ``max_pixels``). The network must treat padding slots as absent (the protocol).
    * ``crop``: the background is evaluated once on the full images; component ``j`` of image ``b`` is
      evaluated on a crop only. Requirements: every cropped component declares ``receptive_radius`` ``R``
      (its output at a pixel depends only on input pixels within Chebyshev distance ``R``), is translation
      equivariant (shifting the image and the conditioner positions shifts the output; conditioner
      positions are shifted into crop coordinates; a network that is not, e.g. one with coordinate
      channels or an analytic oracle defined on one image shape, declares ``translation_equivariant =
      False`` and is never cropped), accepts smaller images, treats image borders locally (zero,
      reflect or replicate padding; not circular), and has a bounded *effect support* ``S_jb``: the box holding the
      non-zero entries of its mask, and/or, for ``bind(D, c)`` over the background ``bind(D, none)`` of the
      same ``D`` declaring ``conditioner_radius`` ``r``, the box ``pos +- r`` around the valid conditioners
      (where ``D(x|c) != D(x|none)`` can hold).

      *Exactness.* Let the crop ``Q`` be a box containing ``S`` dilated by ``R`` and clipped to the image.
      For a pixel ``i`` in ``S``, every input pixel within ``R`` of ``i`` is either inside ``Q`` or outside
      the image; in the second case ``Q`` touches the image border on that side, so the network sees the
      same padding there as on the full image. Hence the network's output at ``i`` on ``Q`` equals its
      output at ``i`` on the full image. Outside ``S``, ``a_j (D_j - D_bg) = 0`` (by the mask, or by the
      conditioner radius). So ``D_bg + a_j (D_j[Q] - D_bg)`` restricted to ``S`` and pasted back equals the
      full-image formula. Crops of one network share a size (the largest needed, placed inside the image,
      which only adds context), so they are evaluated as one batch.
    * ``auto``: ``crop`` when it is valid and its crops hold at most half the pixels of the ``n`` full
      component passes (the rest pays for the extra call); else ``batched`` on accelerators and
      ``sequential`` on the CPU, where a stacked batch buys no parallelism (measured in
      ``benchmarks/compose.py``).

    Host syncs: a call checks ``x`` and ``sigma`` once; the value checks inside it (component outputs
    finite, weights and soft masks finite) are computed on the device and read back together when the call
    ends (inside a sampler, when the sampler's call ends). Which component acts on which image needs no
    read-back when the weights are numbers (or ``None``), there are no windows, and there are no masks or
    the masks depend on nothing but the image size (a ``DiscRule``, ``BoxRule`` or ``GaussianRule`` of a
    plain-number size, placed by ``mask_cond``): it is computed at the first call for a batch size, dtype
    and device (and image size, with masks), and kept with the masks and the crop plan, so such a
    composition reads nothing back in a sampler's steps. Otherwise (sigma-dependent or tensor masks,
    windows, tensor weights) it is read back once per call (and the masks' boxes once more for ``crop``),
    unless ``skip_inactive=False``. Conditions are immutable: do not
    write into their tensors.

    Raises:
        LocalScoreError: on malformed arguments at construction, and at call time on images, noise
            levels, masks or weights of the wrong shape, or ``strategy="crop"`` when a component declares
            no receptive radius or has no bounded support; non-finite outputs, weights or masks at the end
            of the call.

    Examples:
        >>> import torch
        >>> from localscore.compose import Composition
        >>> bg = lambda x, s, c=None: torch.zeros_like(x)
        >>> d1 = lambda x, s, c=None: torch.ones_like(x)
        >>> d2 = lambda x, s, c=None: 2 * torch.ones_like(x)
        >>> comp = Composition(bg, [d1, d2], weights=[1.0, -0.5])
        >>> comp(torch.zeros(1, 1, 2, 2), 1.0)[0, 0, 0, 0].item()   # 0 + 1 * (1 - 0) - 0.5 * (2 - 0)
        0.0
    """

    #: Never evaluated on crops as a component of another composition: its conditions and masks are in
    #: full-image coordinates.
    translation_equivariant = False

    def __init__(
        self,
        background: Any,
        components: Sequence[Any],
        weights: WeightSpec = None,
        *,
        windows: Any = None,
        masks: MaskSpec = None,
        mask_cond: Conditions | None = None,
        strategy: Strategy = "auto",
        max_batch: int | None = None,
        max_pixels: int | None = None,
        skip_empty: bool = True,
        skip_inactive: bool = True,
        crop_size: int | None = None,
    ) -> None:
        where = "Composition"
        if not callable(background):
            raise fail(where, f"`background` is {describe(background)}, expected a denoiser D(x, sigma, cond).",
                       "pass e.g. `bind(D, cond.drop_all())`, the unconditional model.")
        if isinstance(components, Tensor) or not isinstance(components, Sequence) or isinstance(components, str):
            raise fail(where, f"`components` is {describe(components)}, expected a list of denoisers.",
                       "wrap a single component in a list: `[bind(D, c)]`.")
        comps = list(components)
        for j, c in enumerate(comps):
            if not callable(c):
                raise fail(where, f"`components[{j}]` is {describe(c)}, expected a denoiser D(x, sigma, cond).")
        n = len(comps)
        if strategy not in STRATEGIES:
            raise fail(where, f"`strategy` is {strategy!r}, expected one of {list(STRATEGIES)}.")
        for name, v in (("max_batch", max_batch), ("max_pixels", max_pixels), ("crop_size", crop_size)):
            _positive_int(name, v, where)
        if crop_size is not None:
            if strategy == "crop":
                raise fail(where, "`crop_size` (windows of a fixed size) and strategy='crop' (crops fitted to each "
                           "component's support) exclude each other.", "drop one of them.")
            engine.check_windowable(background, comps, where)
        self._weights = WeightSpecs(weights, n, where)
        self.background = background
        self.components = comps
        self.windows = check_windows(windows, n, where)
        self._masks = MaskSpecs(masks, mask_cond, n, where)
        self.masks = masks
        self.mask_cond = mask_cond
        self.strategy: Strategy = strategy
        self.max_batch = max_batch
        self.max_pixels = max_pixels
        self.skip_empty = bool(skip_empty)
        self.skip_inactive = bool(skip_inactive)
        self.crop_size = crop_size
        # host-side facts kept between calls (see _Static and engine.host_cond); never part of the result
        self._static: dict[tuple[Any, ...], _Static] = {}
        self._hosts: dict[int, tuple[Conditions, list[list[list[float]]], list[list[bool]]]] = {}

    @property
    def weights(self) -> WeightSpec:
        """The weights as given (see the class doc); assigning checks and normalises the new ones."""
        return self._weights.spec

    @weights.setter
    def weights(self, value: WeightSpec) -> None:
        self._weights = WeightSpecs(value, len(self.components), "Composition")

    # ----------------------------------------------------------------- declared locality
    @property
    def receptive_radius(self) -> int | None:
        """The largest declared receptive radius of the parts, or ``None`` if any part declares none.

        Masks do not widen it (they are fixed in ``x``), so a composition of local models is local.
        """
        radii = [receptive_radius(d) for d in (self.background, *self.components)]
        if any(r is None for r in radii):
            return None
        return max(int(r) for r in radii if r is not None)

    def __len__(self) -> int:
        return len(self.components)

    def __repr__(self) -> str:
        return (f"Composition(background={self.background!r}, n_components={len(self.components)}, "
                f"masks={self._masks.kind}, strategy={self.strategy!r})")

    # ----------------------------------------------------------------- the denoiser
    def __call__(self, x: Tensor, sigma: Any, cond: Conditions | None = None) -> Tensor:
        """``D_hat(x [B, C, H, W], sigma [B] or float) -> [B, C, H, W]`` with ``self.strategy``."""
        return self.evaluate(x, sigma, cond, strategy=self.strategy)

    def evaluate(self, x: Tensor, sigma: Any, cond: Conditions | None = None, *,
                 strategy: Strategy | None = None) -> Tensor:
        """Evaluate the composition with an explicit ``strategy`` (default: the one set at construction).

        Args:
            x: ``[B, C, H, W]`` noisy images.
            sigma: ``[B]`` noise levels or a float.
            cond: must be ``None``: the components carry their own conditions.
            strategy: ``"auto"``, ``"sequential"``, ``"batched"`` or ``"crop"``.

        Returns:
            ``[B, C, H, W]``, the composed denoiser output.

        Examples:
            >>> import torch
            >>> from localscore import Conditions
            >>> from localscore.compose import projective_from
            >>> D = lambda x, s, c=None: x + (0 if c is None else c.counts().view(-1, 1, 1, 1).to(x.dtype))
            >>> comp = projective_from(D, Conditions.from_lists([[(0.0, 0.0), (1.0, 1.0)]]))
            >>> x = torch.zeros(1, 1, 2, 2)
            >>> torch.equal(comp.evaluate(x, 1.0, strategy="sequential"), comp.evaluate(x, 1.0, strategy="batched"))
            True
        """
        where = "Composition"
        if cond is not None:
            raise fail(where, "a composition carries the conditions of its components; got another `cond`.",
                       "call it with cond=None (samplers do by default); build the composition from the "
                       "conditions you want, e.g. `projective_from(D, cond)`.")
        chosen: str = self.strategy if strategy is None else strategy
        if chosen not in STRATEGIES or (chosen == "crop" and self.crop_size is not None):
            raise fail(where, f"`strategy` is {strategy!r}, expected one of "
                       f"{list(STRATEGIES) if self.crop_size is None else list(STRATEGIES)[:3]}.")
        return self._checked(x, sigma, where, lambda x, s, prepared: self._evaluate(x, s, prepared, chosen, where))

    def plan(self, x: Tensor, sigma: Any) -> str:
        """The strategy a call would use for these inputs: ``self.strategy``, what ``auto`` resolves to, or
        ``"windows"`` with a ``crop_size``.

        Examples:
            >>> import torch
            >>> from localscore import Conditions
            >>> from localscore.compose import projective_from
            >>> D = lambda x, s, c=None: x                       # declares no receptive radius: no crops
            >>> projective_from(D, Conditions.from_lists([[(0.0, 0.0)]])).plan(torch.zeros(1, 1, 4, 4), 1.0)
            'sequential'
        """
        return self._checked(x, sigma, "Composition.plan", self._plan)

    # ----------------------------------------------------------------- internals
    def _checked(self, x: Tensor, sigma: Any, where: str, body: Callable[[Tensor, Tensor, _Prepared], _T]) -> _T:
        """The opening :meth:`evaluate` and :meth:`plan` share: check ``x``, the models and ``sigma``, then run
        ``body(x, s [B], self._prepare(x, s))`` in the call's check scope, which vouches for ``x`` and ``s``."""
        x = check_image(x, where)
        self._check_models(x, where)
        s = as_sigma(sigma, x.shape[0], where, like=x)
        with checked_call(where) as scope:
            scope.vouch(x, s)
            return body(x, s, self._prepare(x, s, where))

    def _evaluate(self, x: Tensor, s: Tensor, prepared: _Prepared, chosen: str, where: str) -> Tensor:
        """The body of :meth:`evaluate` with the strategy ``chosen`` (checked)."""
        coef, masks, act, targets, static = prepared
        parts = self._parts()
        if self.crop_size is not None:
            return engine.eval_windows(x, s, coef, masks, act, targets, parts, self.crop_size, where)
        plan: engine.CropPlan | None = None
        if chosen == "auto":
            chosen, plan = self._choose(x, masks, act, targets, where, static)
        if chosen == "crop":
            if plan is None:
                plan = self._cached_crop_plan(x, masks, act, targets, where, static, strict=True)
            assert plan is not None
            return engine.eval_crop(x, s, coef, masks, targets, plan, parts, where)
        return engine.eval_full(x, s, coef, masks, act, targets, parts, where,
                                None if static is None else static.index, merge=chosen == "batched")

    def _plan(self, x: Tensor, s: Tensor, prepared: _Prepared) -> str:
        """The body of :meth:`plan`."""
        _, masks, act, targets, static = prepared
        if self.crop_size is not None:
            return "windows"
        if self.strategy != "auto":
            return self.strategy
        return self._choose(x, masks, act, targets, "Composition.plan", static)[0]

    def _check_models(self, x: Tensor, where: str) -> None:
        """The dtype and device of the denoisers' parameters against ``x`` (metadata only, no host sync)."""
        check_model(self.background, x, where, "background")
        for j, c in enumerate(self.components):
            check_model(c, x, where, f"components[{j}]")

    def _parts(self) -> engine.Parts:
        return engine.Parts(self.background, self.components, self.max_batch, self.max_pixels, self._hosts)

    def _is_static(self) -> bool:
        """Whether which component acts on which image is fixed: number weights, no windows, no masks.

        (Weight tensors are not: their values may change in place, e.g. when the weights are optimised.)
        """
        return (self._weights.static and (not self._masks.present or self._masks.static)
                and all(win is None for win in self.windows))

    def _prepare(self, x: Tensor, s: Tensor, where: str) -> _Prepared:
        """``(coef [B, n], masks, act, targets, static)``: ``act[b][j]`` on the host says whether component ``j``
        is evaluated on image ``b``. A static composition (see :meth:`_is_static`) computes it once per batch
        size, dtype and device (and image size, with masks) and keeps it with the masks (``static``); any other
        reads it back once per call, unless ``skip_inactive`` is off (then every component is evaluated on every
        image)."""
        B = x.shape[0]
        n = len(self.components)
        targets = [engine.target(d, B, x.device) for d in self.components]
        if not self._is_static():
            coef, masks, active = self._activity(x, s, targets, where)
            act = active.tolist() if self.skip_inactive else [[True] * n for _ in range(B)]
            return coef, masks, act, targets, None
        values = (self._weights.values(), self.skip_empty, self.skip_inactive)  # compared by value
        parts = (self.background, *self.components)  # compared by identity, with what they wrap
        refs = (*parts, *(getattr(d, "inner", None) for d in parts), *(getattr(d, "cond", None) for d in parts),
                self._masks.rule, self._masks.cond)
        key: tuple[Any, ...] = (B, x.dtype, x.device, *(x.shape[-2:] if self._masks.present else ()))
        static = self._static.get(key)
        if (static is None or static.values != values or len(static.refs) != len(refs)
                or any(a is not b for a, b in zip(static.refs, refs))):
            coef, masks, active = self._activity(x, s, targets, where)
            act = active.tolist() if self.skip_inactive else [[True] * n for _ in range(B)]
            static = _Static(values, refs, coef, masks, act, {}, {}, {})
            self._static[key] = static
        return static.coef, static.masks, static.act, targets, static

    def _activity(self, x: Tensor, s: Tensor, targets: list[engine.Target], where: str
                  ) -> tuple[Tensor, list[Tensor | None], Tensor]:
        """``(coef [B, n], masks, active [B, n] bool)`` on the device: ``coef = w * on``, the specs at sigma."""
        B = x.shape[0]
        n = len(self.components)
        w = self._weights.matrix(s, where)  # [B, n]
        on = torch.ones(B, n, dtype=torch.bool, device=x.device)
        for j, win in enumerate(self.windows):
            if win is not None:
                on[:, j] = (s >= win[0]) & (s <= win[1])
        if self.skip_empty:
            for j, (_, c, bound) in enumerate(targets):
                if bound and c is not None:
                    on[:, j] &= c.valid.any(dim=1)
        coef = w * on.to(w.dtype)  # [B, n]
        masks = self._masks.evaluate(x, s, where)
        active = coef != 0
        for j, m in enumerate(masks):
            if m is not None:
                nz = m.reshape(m.shape[0], -1).ne(0).any(dim=1)
                active[:, j] &= nz.expand(B) if nz.shape[0] == 1 else nz
        return coef, masks, active

    @staticmethod
    def _plan_key(x: Tensor, targets: list[engine.Target]) -> tuple[Any, ...]:
        """What a crop plan depends on besides the activity: the image size and the networks' declarations
        (read on every call: a network's declared radii may change)."""
        fns = {id(fn): fn for fn, _, _ in targets}
        return (x.shape[-2], x.shape[-1],
                tuple((receptive_radius(fn), conditioner_radius(fn), engine.crop_blocker(fn)) for fn in fns.values()))

    def _choose(self, x: Tensor, masks: list[Tensor | None], act: list[list[bool]], targets: list[engine.Target],
                where: str, static: _Static | None) -> tuple[str, engine.CropPlan | None]:
        """What ``auto`` resolves to, and the crop plan when it is ``crop``."""
        H, W = x.shape[-2:]
        key = self._plan_key(x, targets) if static is not None else ()
        if static is not None and key in static.choice:
            return static.choice[key]
        result: tuple[str, engine.CropPlan | None] = (
            # On the CPU a stacked batch buys no parallelism and its activations fall out of cache: in
            # benchmarks/compose.py it was up to 1.7x slower than sequential calls at K = 16.
            ("sequential" if x.device.type == "cpu" else "batched"), None)
        plan = self._cached_crop_plan(x, masks, act, targets, where, static, strict=False)
        if plan is not None:
            full = sum(sum(row) for row in act) * H * W
            if engine.crop_pixels(plan, targets) <= engine.CROP_GAIN * full:
                result = ("crop", plan)
        if static is not None:
            static.choice[key] = result
        return result

    def _cached_crop_plan(self, x: Tensor, masks: list[Tensor | None], act: list[list[bool]],
                          targets: list[engine.Target], where: str, static: _Static | None, *,
                          strict: bool) -> engine.CropPlan | None:
        """:func:`engine.crop_plan`, kept in ``static`` when there is one (it then depends on the image size only)."""
        if static is None:
            return engine.crop_plan(x, masks, act, targets, self._parts(), where, strict=strict)
        key = (*self._plan_key(x, targets), strict)
        if key not in static.plans:
            static.plans[key] = engine.crop_plan(x, masks, act, targets, self._parts(), where, strict=strict)
        return static.plans[key]
