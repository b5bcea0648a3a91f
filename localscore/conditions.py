"""`Conditions`: a batch of conditioner sets (objects with a position and optional attributes).

A conditioner set ``c_J = {c_j}`` describes the objects an image should contain. A batch of them is
stored padded to a common number of slots ``K``::

    pos   [B, K, 2]   float, (row, col) in pixel units, origin at the top-left pixel centre
    attr  [B, K, A]   float, optional per-object attributes (colour, size, class embedding, ...)
    valid [B, K]      bool, False marks padding

``K = 0``, or a batch whose slots are all invalid, is the unconditional set ``none``.

:class:`ConditionSet` is the protocol every conditioner set implements (``Conditions``, and the prompts of
:class:`localscore.adapters.diffusers.PromptConditions`, whose slots are token groups): what binding,
composition and the influence metrics use.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from torch import Tensor

from ._checks import MAX_ELEMENTS as _MAX_ELEMENTS
from ._checks import check_elements, check_same_device, current_scope
from ._errors import LocalScoreError, describe, fail

__all__ = ["ConditionSet", "Conditions"]

_Index = int | slice | Sequence[int] | Tensor


MAX_ELEMENTS = _MAX_ELEMENTS
"""The most elements a method of :class:`Conditions` allocates for one result (``pos``, ``attr`` and ``valid``
together): ``pad_to``, ``empty`` and ``repeat_interleave`` check the size from metadata first and raise a
:class:`~localscore.LocalScoreError` above it, before allocating. Read at call time: raise
``localscore.conditions.MAX_ELEMENTS`` if the memory is there."""


def _check_slots(B: int, K: int, A: int | None, where: str) -> None:
    """Bound a ``[B, K]`` set (``pos [B, K, 2]``, ``attr [B, K, A]``, ``valid [B, K]``) by :data:`MAX_ELEMENTS`."""
    check_elements(B * K * (3 + (A or 0)), MAX_ELEMENTS, where, f"a set of B = {B:,} images with K = {K:,} slots",
                   "pad to the largest count a batch really holds (`cat` and `compact` do it for you)",
                   limit_name="localscore.conditions.MAX_ELEMENTS")


def _bad_object(bad: Tensor, pos: Tensor) -> LocalScoreError:
    b, k = (int(i) for i in bad.nonzero()[0])
    return fail(
        "Conditions",
        f"object {k} of image {b} has a non-finite position or attribute (pos = {pos[b, k].tolist()}).",
        "pass finite values, or mark the slot as padding with valid[b, k] = False.",
    )


_S = TypeVar("_S", bound="ConditionSet")


@runtime_checkable
class ConditionSet(Protocol):
    """The conditioner-set protocol: what binding, compositions and metrics need of a batch of sets.

    A conditioner set holds ``B`` sets of ``K`` slots each (padded; ``valid`` says which slots are
    present). :class:`Conditions` (objects: positions and attributes) implements it, and so does
    :class:`localscore.adapters.diffusers.PromptConditions` (the token groups of prompts). The slot
    operations return a set of the same type:

    * ``select(j)``: only slot ``j`` (the component of a projective composition);
    * ``ablate(j)``: slot ``j`` absent, ``K`` unchanged (``valid[:, j]`` becomes False);
    * ``drop_all()``: no slot present, the unconditional set ``none``;
    * ``singletons()``: ``[select(j) for j in range(K)]``;
    * ``pad_to(k)``: ``k >= K`` slots, the new ones absent;

    and the batch operations: ``set[index]`` (an int keeps a batch of one; slices, lists and tensors
    select sets), ``repeat_interleave(n)``, ``to(device=None, dtype=None)``, and ``type(set).cat(items)``,
    which concatenates batches along ``B`` (padding ``K`` to the largest). A type may have more
    (``Conditions.drop(j)`` removes slot ``j``: ``K - 1`` slots). ``isinstance(obj, ConditionSet)`` checks
    that the names exist.

    Examples:
        >>> import torch
        >>> c = Conditions.from_lists([[(0, 0), (5, 5)]])
        >>> isinstance(c, ConditionSet), c.ablate(0).valid.tolist(), type(c).cat([c, c.drop_all()]).batch_size
        (True, [[False, True]], 2)
    """

    @property
    def batch_size(self) -> int:
        """``B``, the number of sets."""
        ...

    @property
    def num_slots(self) -> int:
        """``K``, the number of slots per set."""
        ...

    @property
    def valid(self) -> Tensor:
        """``[B, K]`` bool: the slots present."""
        ...

    @property
    def device(self) -> torch.device:
        """The device of the set's tensors."""
        ...

    def select(self: _S, j: int) -> _S:
        """Only slot ``j`` present."""
        ...

    def ablate(self: _S, j: int) -> _S:
        """Slot ``j`` absent, ``K`` unchanged."""
        ...

    def drop_all(self: _S) -> _S:
        """No slot present."""
        ...

    def singletons(self: _S) -> list[_S]:
        """``[select(j) for j in range(K)]``."""
        ...

    def pad_to(self: _S, num_slots: int) -> _S:
        """Absent slots up to ``num_slots``."""
        ...

    def __getitem__(self: _S, index: Any) -> _S:
        """Batch indexing."""
        ...

    def repeat_interleave(self: _S, repeats: int) -> _S:
        """Every set repeated ``repeats`` times along the batch."""
        ...

    def to(self: _S, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> _S:
        """Moved and/or cast."""
        ...

    @staticmethod
    def cat(items: Sequence[Any]) -> Any:
        """Batches of one type concatenated along ``B``."""
        ...


class Conditions:
    """A batch of conditioner sets, padded to ``K`` slots per image.

    Args:
        pos: ``[B, K, 2]`` floating positions ``(row, col)`` in pixels. Valid slots must be finite;
            the values of padding slots are ignored (and zeroed in the stored copy if not finite).
        attr: optional ``[B, K, A]`` floating attributes (``A >= 1``), stored in ``pos``'s dtype (a set has one
            dtype: ``attr`` of another floating dtype is converted, as :meth:`to` would).
        valid: optional ``[B, K]`` bool mask; ``None`` means every slot is a real object.

    Raises:
        LocalScoreError: on wrong ranks, shapes, dtypes, devices, or non-finite valid entries.

    Examples:
        >>> import torch
        >>> from localscore import Conditions
        >>> c = Conditions.from_lists([[(3.0, 4.0), (10.0, 2.0)], [(7.5, 7.5)]])
        >>> c.pos.shape, c.valid.tolist()
        (torch.Size([2, 2, 2]), [[True, True], [True, False]])
        >>> [s.counts().tolist() for s in c.singletons()]
        [[1, 1], [1, 0]]
    """

    __slots__ = ("attr", "pos", "valid")

    pos: Tensor
    attr: Tensor | None
    valid: Tensor

    def __init__(self, pos: Tensor, attr: Tensor | None = None, valid: Tensor | None = None) -> None:
        where = "Conditions"
        if not isinstance(pos, torch.Tensor):
            raise fail(where, f"argument `pos` is {describe(pos)}, expected a tensor [B, K, 2].",
                       "build from Python lists with `Conditions.from_lists(...)`.")
        if pos.dim() != 3 or pos.shape[-1] != 2:
            raise fail(
                where,
                f"argument `pos` has shape {tuple(pos.shape)}, expected [B, K, 2] "
                "(a batch of K (row, col) positions per image).",
                "for one image with K objects use `pos[None]`; for ragged lists use "
                "`Conditions.from_lists`.",
            )
        if not pos.is_floating_point():
            raise fail(where, f"argument `pos` has dtype {pos.dtype}, expected a floating dtype.",
                       "convert it with `pos.float()`.")
        B, K = pos.shape[0], pos.shape[1]
        if valid is None:
            valid = torch.ones(B, K, dtype=torch.bool, device=pos.device)
        else:
            if not isinstance(valid, torch.Tensor):
                raise fail(where, f"argument `valid` is {describe(valid)}, expected a bool tensor [B, K].")
            if valid.dtype != torch.bool:
                raise fail(where, f"argument `valid` has dtype {valid.dtype}, expected torch.bool.",
                           "pass `valid.bool()` (True marks a real object, False a padding slot).")
            if tuple(valid.shape) != (B, K):
                raise fail(where, f"argument `valid` has shape {tuple(valid.shape)}, expected "
                           f"[B, K] = [{B}, {K}] to match `pos`.")
        if attr is not None:
            if not isinstance(attr, torch.Tensor):
                raise fail(where, f"argument `attr` is {describe(attr)}, expected a tensor [B, K, A].")
            if attr.dim() != 3 or tuple(attr.shape[:2]) != (B, K) or attr.shape[2] == 0:
                raise fail(
                    where,
                    f"argument `attr` has shape {tuple(attr.shape)}, expected [B, K, A] = [{B}, {K}, A] "
                    "with A >= 1, matching `pos`.",
                    "give one attribute vector per slot; use attr=None when objects have no attributes.",
                )
            if not attr.is_floating_point():
                raise fail(where, f"argument `attr` has dtype {attr.dtype}, expected a floating dtype.",
                           "convert it (e.g. one-hot class ids) with `attr.float()`.")
            if attr.dtype != pos.dtype:  # one dtype per set (`dtype` is pos's): attr follows it, as `to` does
                attr = attr.to(pos.dtype)
        check_same_device(where, pos=pos, valid=valid, attr=attr)
        if pos.device.type == "meta":  # no values to check (shape-only tensors, e.g. to emulate a device)
            object.__setattr__(self, "pos", pos)
            object.__setattr__(self, "attr", attr)
            object.__setattr__(self, "valid", valid)
            return
        # Valid slots must be finite; padding slots are sanitised so they never poison arithmetic.
        finite_pos = torch.isfinite(pos).all(-1)
        bad = valid & ~finite_pos
        if attr is not None:
            finite_attr = torch.isfinite(attr).all(-1)
            bad = bad | (valid & ~finite_attr)
        scope = current_scope()
        if scope is not None:  # inside a sampler step or another checked call: no read-back, raised at its end
            values = pos.detach()
            scope.require_false(bad, lambda: _bad_object(bad, values))
            zero = torch.zeros((), dtype=pos.dtype, device=pos.device)
            pos = torch.where(finite_pos[..., None], pos, zero)
            if attr is not None:
                attr = torch.where(torch.isfinite(attr), attr, zero.to(attr.dtype))
            object.__setattr__(self, "pos", pos)
            object.__setattr__(self, "attr", attr)
            object.__setattr__(self, "valid", valid)
            return
        if bool(bad.any()):
            raise _bad_object(bad, pos)
        if not bool(finite_pos.all()):
            pos = torch.where(finite_pos[..., None], pos, torch.zeros((), dtype=pos.dtype, device=pos.device))
        if attr is not None and not bool(torch.isfinite(attr).all()):
            attr = torch.where(torch.isfinite(attr), attr, torch.zeros((), dtype=attr.dtype, device=attr.device))
        object.__setattr__(self, "pos", pos)
        object.__setattr__(self, "attr", attr)
        object.__setattr__(self, "valid", valid)

    @classmethod
    def _derived(cls, pos: Tensor, attr: Tensor | None, valid: Tensor) -> Conditions:
        """A Conditions built from the (already checked) tensors of others, without checking the values again.

        Slicing, selecting, padding, concatenating or shifting valid finite positions keeps them valid and
        finite, so these operations skip the constructor's value checks, which read values back to the host
        (a device sync on a GPU) and run inside every sampler step.
        """
        out = object.__new__(cls)
        object.__setattr__(out, "pos", pos)
        object.__setattr__(out, "attr", attr)
        object.__setattr__(out, "valid", valid)
        return out

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Conditions is immutable; build a new one instead.")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Conditions is immutable; build a new one instead.")

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_lists(
        cls,
        positions: Sequence[Any],
        attrs: Sequence[Any] | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Conditions:
        """Build a padded batch from ragged per-image lists.

        Args:
            positions: one entry per image, each a sequence of ``(row, col)`` pairs or a ``[k, 2]``
                tensor/array (``k`` may differ between images, and may be 0).
            attrs: optional, one entry per image, each a sequence of attribute vectors or a ``[k, A]``
                tensor, with the same ``k`` as ``positions``.
            dtype: floating dtype of ``pos``/``attr`` (default: torch's default dtype).
            device: device of the result.

        Returns:
            Conditions with ``K = max(k)``; shorter images are padded with invalid slots.

        Examples:
            >>> c = Conditions.from_lists([[(1, 2)], []], attrs=[[[1.0, 0.0]], []])
            >>> c.pos.shape, c.attr.shape, c.counts().tolist()
            (torch.Size([2, 1, 2]), torch.Size([2, 1, 2]), [1, 0])
        """
        where = "Conditions.from_lists"
        dtype = dtype or torch.get_default_dtype()
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise fail(where, f"argument `dtype` is {dtype!r}, expected a floating torch.dtype.",
                       "positions are floats in pixel units; use torch.float32 or torch.float64.")
        if isinstance(positions, torch.Tensor) or not isinstance(positions, Sequence) or isinstance(positions, str):
            raise fail(where, f"argument `positions` is {describe(positions)}, expected a list with one "
                       "entry per image.",
                       "wrap one image's objects in a list: `[[(r0, c0), (r1, c1)]]`; for a padded tensor "
                       "use `Conditions(pos, attr, valid)`.")
        if len(positions) == 0:
            raise fail(where, "argument `positions` is empty, expected one entry per image (B >= 1).",
                       "for an unconditional image pass `[[]]`.")
        if attrs is not None and len(attrs) != len(positions):
            raise fail(where, f"`attrs` has {len(attrs)} entries but `positions` has {len(positions)}; "
                       "expected one per image.")
        pos_list: list[Tensor] = []
        attr_list: list[Tensor] = []
        def as_rows(value: Any, b: int, what: str) -> Tensor | None:
            # one image's entry -> a tensor (None when it has no objects); anything else is a clear error
            try:
                if len(value) == 0:
                    return None
                return torch.as_tensor(value, dtype=dtype)
            except (TypeError, ValueError, RuntimeError):
                raise fail(where, f"image {b}: {what} entry is {describe(value)}, expected a list of "
                           f"{'(row, col) pairs' if what == 'positions' else 'attribute vectors'} or a tensor.",
                           "give one list per image, e.g. positions=[[(r0, c0), (r1, c1)], [(r2, c2)]].") from None

        for b, p in enumerate(positions):
            maybe = as_rows(p, b, "positions")
            pt = maybe if maybe is not None else torch.zeros(0, 2, dtype=dtype)
            if pt.dim() != 2 or pt.shape[-1] != 2:
                raise fail(where, f"image {b}: positions have shape {tuple(pt.shape)}, expected [k, 2] "
                           "((row, col) pairs).")
            pos_list.append(pt)
            if attrs is not None:
                at = as_rows(attrs[b], b, "attrs")
                if at is not None and (at.dim() != 2 or at.shape[0] != pt.shape[0]):
                    raise fail(where, f"image {b}: attrs have shape {tuple(at.shape)}, expected "
                               f"[k, A] with k = {pt.shape[0]} objects.")
                if at is None and pt.shape[0] > 0:
                    raise fail(where, f"image {b}: {pt.shape[0]} positions but no attributes.")
                attr_list.append(at if at is not None else torch.zeros(0, 0, dtype=dtype))
        K = max(p.shape[0] for p in pos_list)
        B = len(pos_list)
        pos = torch.zeros(B, K, 2, dtype=dtype)
        valid = torch.zeros(B, K, dtype=torch.bool)
        for b, p in enumerate(pos_list):
            pos[b, : p.shape[0]] = p
            valid[b, : p.shape[0]] = True
        attr = None
        if attrs is not None:
            dims = {a.shape[1] for a in attr_list if a.shape[0] > 0}
            if len(dims) > 1:
                raise fail(where, f"attribute vectors have different lengths {sorted(dims)}; expected one A.")
            if not dims:
                raise fail(where, "`attrs` was given but no image has an object, so A is unknown.",
                           "pass attrs=None, or use `Conditions.empty(B, attr_dim=A)`.")
            A = dims.pop()
            attr = torch.zeros(B, K, A, dtype=dtype)
            for b, a in enumerate(attr_list):
                if a.shape[0] > 0:
                    attr[b, : a.shape[0]] = a
        out = cls(pos, attr, valid)
        return out.to(device) if device is not None else out

    @classmethod
    def empty(
        cls,
        batch_size: int,
        *,
        attr_dim: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Conditions:
        """The unconditional set ``none`` for ``batch_size`` images (``K = 0``).

        Examples:
            >>> Conditions.empty(3).pos.shape
            torch.Size([3, 0, 2])
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise fail("Conditions.empty", f"`batch_size` is {batch_size!r}, expected an int >= 1.")
        if attr_dim is not None and (isinstance(attr_dim, bool) or not isinstance(attr_dim, int) or attr_dim < 1):
            raise fail("Conditions.empty", f"`attr_dim` is {attr_dim!r}, expected None or an int >= 1.")
        check_elements(batch_size, MAX_ELEMENTS, "Conditions.empty", f"a batch of {batch_size:,} empty sets",
                       "pass the batch size of your images", limit_name="localscore.conditions.MAX_ELEMENTS")
        dtype = dtype or torch.get_default_dtype()
        pos = torch.zeros(batch_size, 0, 2, dtype=dtype, device=device)
        attr = None if attr_dim is None else torch.zeros(batch_size, 0, attr_dim, dtype=dtype, device=device)
        if not pos.is_floating_point():
            return cls(pos, attr, torch.zeros(batch_size, 0, dtype=torch.bool, device=device))  # raises
        return cls._derived(pos, attr, torch.zeros(batch_size, 0, dtype=torch.bool, device=device))

    # ----------------------------------------------------------------- properties
    @property
    def batch_size(self) -> int:
        """``B``, the number of images."""
        return int(self.pos.shape[0])

    @property
    def num_slots(self) -> int:
        """``K``, the padded number of objects per image."""
        return int(self.pos.shape[1])

    @property
    def attr_dim(self) -> int | None:
        """``A``, the attribute length, or ``None`` without attributes."""
        return None if self.attr is None else int(self.attr.shape[2])

    @property
    def device(self) -> torch.device:
        """The device of the tensors."""
        return self.pos.device

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of ``pos``."""
        return self.pos.dtype

    @property
    def is_empty(self) -> bool:
        """True when no image has a valid object (the unconditional set ``none``)."""
        return self.num_slots == 0 or not bool(self.valid.any())

    def counts(self) -> Tensor:
        """``[B]`` long: the number of valid objects per image."""
        return self.valid.sum(dim=1)

    def __len__(self) -> int:
        return self.batch_size

    def __repr__(self) -> str:
        """Sizes, counts, and the valid positions by slot (``pos=[{slot: (row, col)}, ...]`` per image) when
        there are at most 16 valid objects, else a summary of ``pos``; attributes are summarised, never listed.

        Examples:
            >>> Conditions.from_lists([[(3.0, 4.0), (10.0, 2.5)], []])
            Conditions(B=2, K=2, A=None, counts=[2, 0], dtype=float32, device=cpu, pos=[{0: (3, 4), 1: (10, 2.5)}, {}])
        """
        from ._repr import tensor_summary

        text = f"Conditions(B={self.batch_size}, K={self.num_slots}, A={self.attr_dim}, "
        where = f"dtype={str(self.dtype).removeprefix('torch.')}, device={self.device}"
        if self.device.type == "meta":  # no values
            return text + where + ")"
        counts = self.counts().tolist()
        text += f"counts={counts}, {where}"
        if sum(counts) <= 16:
            valid, pos = self.valid.tolist(), self.pos.tolist()
            per_image = ("{" + ", ".join(f"{k}: ({p[0]:.6g}, {p[1]:.6g})" for k, p in enumerate(ps) if v[k]) + "}"
                         for ps, v in zip(pos, valid))
            text += f", pos=[{', '.join(per_image)}]"
        else:
            text += f", pos={tensor_summary(self.pos)}"
        if self.attr is not None:
            text += f", attr={tensor_summary(self.attr)}"
        return text + ")"

    # ----------------------------------------------------------------- slot operations
    def _check_slot(self, j: int, where: str) -> int:
        if isinstance(j, bool) or not isinstance(j, int):
            raise fail(where, f"slot index `j` is {describe(j)}, expected an int.")
        K = self.num_slots
        if not -K <= j < K:
            raise fail(where, f"slot index j = {j} is out of range for K = {K} slots.",
                       f"use 0 <= j < {K} (see `num_slots`).")
        return j % K

    def select(self, j: int) -> Conditions:
        """The conditioner set holding only slot ``j`` of every image (``K = 1``).

        Images whose slot ``j`` is padding get an empty set (their single slot is invalid).

        Examples:
            >>> c = Conditions.from_lists([[(0, 0), (5, 5)]])
            >>> c.select(1).pos.tolist()
            [[[5.0, 5.0]]]
        """
        j = self._check_slot(j, "Conditions.select")
        attr = None if self.attr is None else self.attr[:, j : j + 1]
        return Conditions._derived(self.pos[:, j : j + 1], attr, self.valid[:, j : j + 1])

    def drop(self, j: int) -> Conditions:
        """The conditioner set without slot ``j`` (``K - 1`` slots): an ablation of object ``j``.

        Examples:
            >>> Conditions.from_lists([[(0, 0), (5, 5)]]).drop(0).pos.tolist()
            [[[5.0, 5.0]]]
        """
        j = self._check_slot(j, "Conditions.drop")
        keep = [k for k in range(self.num_slots) if k != j]
        return self._take_slots(keep)

    def ablate(self, j: int) -> Conditions:
        """Slot ``j`` absent in every image, ``K`` unchanged (``valid[:, j] = False``): an ablation of object ``j``.

        The model sees the same set as with :meth:`drop`; the slot keeps its place, so results indexed by
        slot (influence maps, regions) stay aligned.

        Examples:
            >>> Conditions.from_lists([[(0, 0), (5, 5)]]).ablate(0).valid.tolist()
            [[False, True]]
        """
        j = self._check_slot(j, "Conditions.ablate")
        valid = self.valid.clone()
        valid[:, j] = False
        return Conditions._derived(self.pos, self.attr, valid)

    def _take_slots(self, slots: Sequence[int]) -> Conditions:
        idx = torch.as_tensor(list(slots), dtype=torch.long, device=self.device)
        attr = None if self.attr is None else self.attr[:, idx]
        return Conditions._derived(self.pos[:, idx], attr, self.valid[:, idx])

    def drop_all(self) -> Conditions:
        """The unconditional set ``none`` with this batch size, attribute length, dtype and device."""
        return Conditions.empty(self.batch_size, attr_dim=self.attr_dim, dtype=self.dtype, device=self.device)

    def singletons(self) -> list[Conditions]:
        """One ``K = 1`` Conditions per slot: ``[self.select(j) for j in range(K)]``.

        These are the components of a projective composition. Padding slots become empty sets,
        whose conditional denoiser equals the unconditional one, so they contribute nothing.
        """
        return [self.select(j) for j in range(self.num_slots)]

    def compact(self) -> Conditions:
        """Drop the slots that are padding in every image, and move valid objects to the front.

        The order of the valid objects within each image is kept.
        """
        order = torch.argsort((~self.valid).to(torch.int8), dim=1, stable=True)
        pos = torch.gather(self.pos, 1, order[..., None].expand_as(self.pos))
        valid = torch.gather(self.valid, 1, order)
        attr = None
        if self.attr is not None:
            attr = torch.gather(self.attr, 1, order[..., None].expand_as(self.attr))
        K = int(valid.sum(1).max()) if self.num_slots else 0
        return Conditions._derived(pos[:, :K], None if attr is None else attr[:, :K], valid[:, :K])

    def pad_to(self, num_slots: int) -> Conditions:
        """Pad with invalid slots up to ``num_slots`` (which must be ``>= K``)."""
        K = self.num_slots
        if isinstance(num_slots, bool) or not isinstance(num_slots, int):
            raise fail("Conditions.pad_to", f"`num_slots` is {describe(num_slots)}, expected an int.")
        if num_slots < K:
            raise fail("Conditions.pad_to", f"num_slots = {num_slots} is below the current K = {K}.",
                       "use `compact()` to remove padding first.")
        if num_slots == K:
            return self
        _check_slots(self.batch_size, num_slots, self.attr_dim, "Conditions.pad_to")
        extra = num_slots - K
        B = self.batch_size
        pos = torch.cat([self.pos, self.pos.new_zeros(B, extra, 2)], 1)
        valid = torch.cat([self.valid, self.valid.new_zeros(B, extra)], 1)
        attr = None
        if self.attr is not None:
            attr = torch.cat([self.attr, self.attr.new_zeros(B, extra, self.attr.shape[2])], 1)
        return Conditions._derived(pos, attr, valid)

    # ----------------------------------------------------------------- batch operations
    def __getitem__(self, index: _Index) -> Conditions:
        """Batch indexing: an int keeps a batch of one; slices, lists and tensors select images.

        Raises:
            LocalScoreError: for a tuple (slot indexing: use :meth:`select` / :meth:`drop`), a float or bool,
                an out-of-range index, or a selection of no image.

        Examples:
            >>> c = Conditions.from_lists([[(0, 0)], [(1, 1), (2, 2)], []])
            >>> c[1].counts().tolist(), c[[2, 0]].counts().tolist(), c[torch.tensor([True, False, True])].batch_size
            ([2], [0, 1], 2)
        """
        if isinstance(index, int) and not isinstance(index, bool):
            if not -self.batch_size <= index < self.batch_size:
                raise fail("Conditions[...]", f"image index {index} is out of range for B = {self.batch_size}.")
            index = slice(index, index + 1 if index != -1 else None)
        elif isinstance(index, tuple):
            raise fail("Conditions[...]", "only batch indexing is supported (one index).",
                       "select slots with `select(j)` or `drop(j)`.")
        elif isinstance(index, bool) or not isinstance(index, (slice, Sequence, torch.Tensor)) or isinstance(
                index, str):
            raise fail("Conditions[...]", f"index is {describe(index)}, expected an int, a slice, a list of "
                       "ints, or a long/bool tensor over the batch.")
        try:
            pos = self.pos[index]
        except (IndexError, TypeError, RuntimeError) as e:
            raise fail("Conditions[...]", f"cannot index a batch of B = {self.batch_size} images with "
                       f"{describe(index)}: {e}") from None
        if pos.dim() != 3 or pos.shape[0] == 0:
            raise fail("Conditions[...]", f"index {describe(index)} selects no image from B = {self.batch_size} "
                       "(or is not a batch index).", "a Conditions holds at least one image.")
        attr = None if self.attr is None else self.attr[index]
        return Conditions._derived(pos, attr, self.valid[index])

    def __iter__(self) -> Iterator[Conditions]:
        """Iterate over images, each as a batch of one."""
        for b in range(self.batch_size):
            yield self[b]

    def repeat_interleave(self, repeats: int) -> Conditions:
        """Repeat every image ``repeats`` times along the batch (as ``torch.repeat_interleave``)."""
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise fail("Conditions.repeat_interleave", f"`repeats` is {repeats!r}, expected an int >= 1.")
        _check_slots(self.batch_size * repeats, self.num_slots, self.attr_dim, "Conditions.repeat_interleave")
        attr = None if self.attr is None else self.attr.repeat_interleave(repeats, 0)
        return Conditions._derived(self.pos.repeat_interleave(repeats, 0), attr,
                                   self.valid.repeat_interleave(repeats, 0))

    @staticmethod
    def cat(items: Sequence[Conditions]) -> Conditions:
        """Concatenate batches along ``B``, padding ``K`` to the largest.

        All items must agree on having attributes (and on ``A``), dtype and device.

        Examples:
            >>> a = Conditions.from_lists([[(1, 1)]]); b = Conditions.from_lists([[(2, 2), (3, 3)]])
            >>> Conditions.cat([a, b]).valid.tolist()
            [[True, False], [True, True]]
        """
        where = "Conditions.cat"
        items = list(items)
        if not items:
            raise fail(where, "got an empty list, expected at least one Conditions.")
        for i, c in enumerate(items):
            if not isinstance(c, Conditions):
                raise fail(where, f"item {i} is {describe(c)}, expected a Conditions.")
        dims = {c.attr_dim for c in items}
        if len(dims) > 1:
            raise fail(where, f"items have different attribute lengths {sorted(dims, key=str)}.",
                       "give every batch the same attributes (or none).")
        devices = {c.device for c in items}
        if len(devices) > 1:
            raise fail(where, f"items are on different devices {sorted(map(str, devices))}.",
                       "move them with `.to(device)` first.")
        K = max(c.num_slots for c in items)
        padded = [c.pad_to(K) for c in items]
        dtype = items[0].dtype
        pos = torch.cat([c.pos.to(dtype) for c in padded])
        valid = torch.cat([c.valid for c in padded])
        attr = None
        if items[0].attr is not None:
            attr = torch.cat([c.attr.to(dtype) for c in padded if c.attr is not None])
        if any(c.dtype != dtype and torch.finfo(c.dtype).max > torch.finfo(dtype).max for c in items):
            return Conditions(pos, attr, valid)  # a narrowing cast may overflow: check the values again
        return Conditions._derived(pos, attr, valid)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Conditions:
        """Move to ``device`` and/or cast positions and attributes to ``dtype`` (``valid`` stays bool)."""
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
            raise fail("Conditions.to", f"`dtype` is {dtype}, expected a floating dtype.")
        if device is not None:
            try:
                device = torch.device(device)
            except (RuntimeError, TypeError):
                raise fail("Conditions.to", f"`device` is {describe(device)}, not a torch device.",
                           "pass e.g. 'cpu', 'cuda', 'cuda:1' or x.device.") from None
        pos = self.pos.to(device=device, dtype=dtype)
        attr = None if self.attr is None else self.attr.to(device=device, dtype=dtype)
        valid = self.valid.to(device=device)
        if dtype is not None and torch.finfo(dtype).max < torch.finfo(self.dtype).max:
            return Conditions(pos, attr, valid)  # a narrowing cast may overflow: check the values again
        return Conditions._derived(pos, attr, valid)

    def check_batch(self, batch_size: int, where: str, *, device: torch.device | None = None) -> Conditions:
        """Raise unless this batch has ``batch_size`` images (on ``device`` if given); return self.

        Used by functions that take images and conditions together.
        """
        if self.batch_size != batch_size:
            raise fail(where, f"`cond` has B = {self.batch_size} images but `x` has B = {batch_size}.",
                       "pass one conditioner set per image (use `cond.repeat_interleave(n)` to share one).")
        if device is not None and self.device != device:
            raise fail(where, f"`cond` is on {self.device} but `x` is on {device}.",
                       "move it with `cond.to(x.device)`.")
        return self
