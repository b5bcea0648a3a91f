"""Tests of `localscore.Conditions`: construction, slot and batch operations, immutability, bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from localscore import Conditions, LocalScoreError

F64 = torch.float64
coord = st.floats(-50.0, 50.0, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def ragged(draw: st.DrawFn, *, min_b: int = 1, max_b: int = 4, max_k: int = 5,
           attrs: bool | None = None) -> tuple[list[list[tuple[float, float]]], list[list[list[float]]] | None]:
    """Ragged per-image object lists (and optionally attributes of one common length A)."""
    counts = draw(st.lists(st.integers(0, max_k), min_size=min_b, max_size=max_b))
    pos = [[(draw(coord), draw(coord)) for _ in range(k)] for k in counts]
    with_attrs = draw(st.booleans()) if attrs is None else attrs
    if not with_attrs or sum(counts) == 0:
        return pos, None
    A = draw(st.integers(1, 3))
    att = [[[draw(coord) for _ in range(A)] for _ in range(k)] for k in counts]
    return pos, att


def objects_of(c: Conditions, b: int) -> list[tuple[tuple[float, ...], tuple[float, ...] | None]]:
    """The valid objects of image ``b`` in slot order, as plain tuples (for order-aware comparisons)."""
    out = []
    for k in range(c.num_slots):
        if bool(c.valid[b, k]):
            a = None if c.attr is None else tuple(c.attr[b, k].tolist())
            out.append((tuple(c.pos[b, k].tolist()), a))
    return out


def expected_objects(pos, att, b):
    return [(tuple(float(torch.tensor(v, dtype=F64)) for v in p), None if att is None else
             tuple(float(torch.tensor(v, dtype=F64)) for v in att[b][i])) for i, p in enumerate(pos[b])]


# --------------------------------------------------------------------------- construction
@given(ragged())
def test_from_lists_round_trips_ragged_lists(data) -> None:
    pos, att = data
    c = Conditions.from_lists(pos, att, dtype=F64)
    counts = [len(p) for p in pos]
    assert c.batch_size == len(pos) == len(c)
    assert c.num_slots == max(counts)
    assert c.counts().tolist() == counts
    assert c.valid.tolist() == [[k < n for k in range(max(counts))] for n in counts]
    assert c.attr_dim == (None if att is None else len(att[next(i for i, n in enumerate(counts) if n)][0]))
    assert c.is_empty == (sum(counts) == 0)
    for b in range(len(pos)):
        assert objects_of(c, b) == expected_objects(pos, att, b)
    # padding slots are zero-filled
    assert float(c.pos[~c.valid].abs().sum()) == 0.0
    assert c.dtype == F64 and c.pos.dtype == F64 and c.valid.dtype == torch.bool


def test_from_lists_accepts_tensors_arrays_and_devices() -> None:
    c = Conditions.from_lists([torch.ones(2, 2), np.zeros((0, 2)), np.full((1, 2), 3.0)],
                              attrs=[torch.ones(2, 4), [], np.ones((1, 4))], device="cpu")
    assert c.pos.shape == (3, 2, 2) and c.attr is not None and c.attr.shape == (3, 2, 4)
    assert c.counts().tolist() == [2, 0, 1] and c.dtype == torch.get_default_dtype()
    assert Conditions.from_lists([[]]).is_empty and Conditions.from_lists([[]]).num_slots == 0
    m = Conditions.from_lists([[(1.0, 2.0)]], device="meta")
    assert m.device.type == "meta" and "meta" in repr(m)


def test_constructor_defaults_and_sanitises_padding() -> None:
    pos = torch.tensor([[[1.0, 2.0], [float("nan"), float("inf")]]])
    attr = torch.tensor([[[1.0], [float("nan")]]])
    c = Conditions(pos, attr, torch.tensor([[True, False]]))
    assert c.pos.tolist() == [[[1.0, 2.0], [0.0, 0.0]]] and c.attr is not None and c.attr.tolist() == [[[1.0], [0.0]]]
    assert bool(torch.isnan(pos).any())  # the caller's tensor is not modified
    full = Conditions(torch.zeros(2, 3, 2))
    assert bool(full.valid.all()) and full.attr is None and full.attr_dim is None


def test_empty() -> None:
    e = Conditions.empty(3, attr_dim=2, dtype=F64)
    assert e.pos.shape == (3, 0, 2) and e.attr is not None and e.attr.shape == (3, 0, 2)
    assert e.is_empty and e.counts().tolist() == [0, 0, 0] and e.dtype == F64
    all_padding = Conditions(torch.zeros(2, 3, 2), valid=torch.zeros(2, 3, dtype=torch.bool))
    assert all_padding.is_empty
    for bad in (0, -1, 2.0, True):
        with pytest.raises(LocalScoreError, match="batch_size"):
            Conditions.empty(bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- slot operations
@given(ragged(attrs=None), st.data())
def test_select_and_drop_partition_the_objects(data, d) -> None:
    pos, att = data
    c = Conditions.from_lists(pos, att, dtype=F64)
    if c.num_slots == 0:
        with pytest.raises(LocalScoreError, match="out of range"):
            c.select(0)
        assert c.singletons() == []
        return
    j = d.draw(st.integers(-c.num_slots, c.num_slots - 1))
    sel, rest = c.select(j), c.drop(j)
    assert sel.num_slots == 1 and rest.num_slots == c.num_slots - 1
    assert sel.attr_dim == rest.attr_dim == c.attr_dim
    torch.testing.assert_close(sel.counts() + rest.counts(), c.counts(), rtol=0, atol=0)
    jj = j % c.num_slots
    for b in range(c.batch_size):
        objs = objects_of(c, b)
        if jj < len(objs):
            assert objects_of(sel, b) == [objs[jj]]
            assert objects_of(rest, b) == objs[:jj] + objs[jj + 1:]
        else:
            assert objects_of(sel, b) == [] and objects_of(rest, b) == objs


@given(ragged())
def test_singletons_split_every_object_once(data) -> None:
    pos, att = data
    c = Conditions.from_lists(pos, att, dtype=F64)
    singles = c.singletons()
    assert len(singles) == c.num_slots
    for b in range(c.batch_size):
        got = [o for s in singles for o in objects_of(s, b)]
        assert got == objects_of(c, b)
    for s in singles:
        assert s.num_slots == 1 and s.batch_size == c.batch_size and int(s.counts().max()) <= 1


@given(ragged(), st.data())
def test_compact_and_pad_to(data, d) -> None:
    pos, att = data
    c = Conditions.from_lists(pos, att, dtype=F64)
    extra = d.draw(st.integers(0, 3))
    padded = c.pad_to(c.num_slots + extra)
    assert padded.num_slots == c.num_slots + extra
    assert torch.equal(padded.counts(), c.counts())
    if extra == 0:
        assert padded is c
    # scramble which slots are padding: compact keeps each image's objects in slot order, valid ones first
    perm = torch.randperm(padded.num_slots, generator=torch.Generator().manual_seed(d.draw(st.integers(0, 99))))
    scrambled = Conditions(padded.pos[:, perm], None if padded.attr is None else padded.attr[:, perm],
                           padded.valid[:, perm])
    comp = scrambled.compact()
    assert comp.num_slots == (int(c.counts().max()) if c.num_slots else 0)
    for b in range(c.batch_size):
        assert objects_of(comp, b) == objects_of(scrambled, b)
        assert sorted(objects_of(comp, b), key=repr) == sorted(objects_of(c, b), key=repr)
        n = int(c.counts()[b])
        assert comp.valid[b].tolist() == [k < n for k in range(comp.num_slots)]
    assert [objects_of(padded.compact(), b) for b in range(c.batch_size)] == [
        objects_of(c, b) for b in range(c.batch_size)]
    assert objects_of(comp.compact(), 0) == objects_of(comp, 0)  # idempotent


def test_compact_keeps_order_and_drops_common_padding() -> None:
    pos = torch.arange(12.0).view(2, 3, 2)
    valid = torch.tensor([[False, True, False], [True, False, True]])
    c = Conditions(pos, torch.arange(6.0).view(2, 3, 1), valid).compact()
    assert c.pos.tolist() == [[[2.0, 3.0], [0.0, 1.0]], [[6.0, 7.0], [10.0, 11.0]]]
    assert c.valid.tolist() == [[True, False], [True, True]]
    assert c.attr is not None and c.attr[:, :, 0].tolist() == [[1.0, 0.0], [3.0, 5.0]]
    assert Conditions(pos, valid=torch.zeros(2, 3, dtype=torch.bool)).compact().num_slots == 0


# --------------------------------------------------------------------------- batch operations
@given(st.lists(ragged(attrs=False), min_size=1, max_size=3))
def test_cat_then_index_returns_each_batch(parts) -> None:
    items = [Conditions.from_lists(p, dtype=F64) for p, _ in parts]
    c = Conditions.cat(items)
    assert c.batch_size == sum(i.batch_size for i in items)
    assert c.num_slots == max(i.num_slots for i in items)
    start = 0
    for item in items:
        for b in range(item.batch_size):
            assert objects_of(c[start + b], 0) == objects_of(item, b)
        view = c[start : start + item.batch_size]
        assert torch.equal(view.counts(), item.counts())
        start += item.batch_size


@given(ragged(), st.integers(1, 3))
def test_repeat_interleave_and_iteration(data, r) -> None:
    pos, att = data
    c = Conditions.from_lists(pos, att, dtype=F64)
    rep = c.repeat_interleave(r)
    assert rep.batch_size == r * c.batch_size
    for b in range(c.batch_size):
        for t in range(r):
            assert objects_of(rep, b * r + t) == objects_of(c, b)
    images = list(c)
    assert len(images) == c.batch_size and all(im.batch_size == 1 for im in images)
    assert [objects_of(im, 0) for im in images] == [objects_of(c, b) for b in range(c.batch_size)]


def test_indexing_forms() -> None:
    c = Conditions.from_lists([[(0.0, 0.0)], [(1.0, 1.0), (2.0, 2.0)], [(3.0, 3.0)]], attrs=[[[0.0]], [[1.0], [2.0]],
                                                                                            [[3.0]]])
    assert c[-1].pos[0, 0].tolist() == [3.0, 3.0] and c[-1].batch_size == 1
    assert c[0].pos[0, 0].tolist() == [0.0, 0.0]
    assert c[[2, 0]].pos[:, 0, 0].tolist() == [3.0, 0.0]
    assert c[torch.tensor([1])].counts().tolist() == [2]
    assert c[torch.tensor([True, False, True])].counts().tolist() == [1, 1]
    assert c[1:].batch_size == 2 and c[::2].pos[:, 0, 0].tolist() == [0.0, 3.0]
    assert c[1].attr is not None and c[1].attr[0, :, 0].tolist() == [1.0, 2.0]


def test_to_moves_and_casts() -> None:
    c = Conditions.from_lists([[(1.5, 2.5)], []], attrs=[[[1.0, 2.0]], []])
    d = c.to(dtype=F64)
    assert d.pos.dtype == F64 and d.attr is not None and d.attr.dtype == F64 and d.valid.dtype == torch.bool
    assert d.pos.tolist() == c.pos.tolist()
    m = c.to("meta")
    assert m.device.type == "meta" and m.valid.device.type == "meta" and m.attr is not None
    assert m.attr.device.type == "meta" and m.batch_size == 2 and m.num_slots == 1
    assert c.to().pos is c.pos or torch.equal(c.to().pos, c.pos)


def test_check_batch() -> None:
    c = Conditions.from_lists([[(1.0, 1.0)], []])
    assert c.check_batch(2, "f") is c
    with pytest.raises(LocalScoreError, match=r"`cond` has B = 2 images but `x` has B = 3") as e:
        c.check_batch(3, "f")
    assert "repeat_interleave" in str(e.value)
    with pytest.raises(LocalScoreError, match="`cond` is on cpu but `x` is on meta"):
        c.check_batch(2, "f", device=torch.device("meta"))


# --------------------------------------------------------------------------- immutability
def test_immutable() -> None:
    c = Conditions.from_lists([[(1.0, 1.0)]])
    for name in ("pos", "attr", "valid", "other"):
        with pytest.raises(AttributeError, match="immutable"):
            setattr(c, name, None)
        with pytest.raises(AttributeError, match="immutable"):
            delattr(c, name)
    before = c.pos.clone()
    c.select(0), c.drop(0), c.pad_to(3), c.compact(), c.repeat_interleave(2), c.to(dtype=F64), c.drop_all()
    assert torch.equal(c.pos, before) and c.num_slots == 1  # no operation changes the original


def test_drop_all_keeps_batch_attr_dtype_device() -> None:
    c = Conditions.from_lists([[(1.0, 1.0)], [(2.0, 2.0), (3.0, 3.0)]], attrs=[[[1.0]], [[2.0], [3.0]]], dtype=F64)
    e = c.drop_all()
    assert e.is_empty and e.batch_size == 2 and e.attr_dim == 1 and e.dtype == F64 and e.device == c.device


# --------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    ("args", "msg"),
    [
        ((torch.zeros(2, 3),), r"expected \[B, K, 2\]"),
        ((torch.zeros(1, 2, 3),), r"expected \[B, K, 2\]"),
        ((torch.zeros(1, 2, 2, 1),), r"expected \[B, K, 2\]"),
        ((torch.zeros(1, 2, 2, dtype=torch.long),), "floating dtype"),
        (([[[0.0, 0.0]]],), "expected a tensor"),
        ((torch.zeros(1, 2, 2), None, torch.ones(1, 2)), "expected torch.bool"),
        ((torch.zeros(1, 2, 2), None, torch.ones(1, 3, dtype=torch.bool)), r"expected \[B, K\] = \[1, 2\]"),
        ((torch.zeros(1, 2, 2), None, [[True, True]]), "expected a bool tensor"),
        ((torch.zeros(1, 2, 2), torch.zeros(1, 2)), r"expected \[B, K, A\]"),
        ((torch.zeros(1, 2, 2), torch.zeros(1, 3, 1)), r"expected \[B, K, A\]"),
        ((torch.zeros(1, 2, 2), torch.zeros(1, 2, 0)), "A >= 1"),
        ((torch.zeros(1, 2, 2), torch.zeros(1, 2, 1, dtype=torch.long)), "floating dtype"),
        ((torch.zeros(1, 2, 2), [[[1.0], [2.0]]]), "expected a tensor"),
        ((torch.tensor([[[0.0, 1.0], [float("nan"), 2.0]]]),), "object 1 of image 0 has a non-finite"),
        ((torch.tensor([[[0.0, float("-inf")]]]),), "object 0 of image 0 has a non-finite"),
        ((torch.zeros(1, 1, 2), torch.tensor([[[float("nan")]]])), "non-finite position or attribute"),
        ((torch.zeros(1, 1, 2), torch.zeros(1, 1, 1, device="meta")), "is on meta but `pos` is on cpu"),
        ((torch.zeros(1, 1, 2), None, torch.ones(1, 1, dtype=torch.bool, device="meta")), "on meta"),
    ],
)
def test_constructor_rejects(args, msg: str) -> None:
    with pytest.raises(LocalScoreError, match=msg) as e:
        Conditions(*args)
    assert str(e.value).startswith("Conditions: ")


@given(ragged(min_b=1, max_b=3, max_k=4, attrs=False), st.data())
def test_non_finite_valid_positions_always_raise(data, d) -> None:
    pos, _ = data
    c = Conditions.from_lists(pos, dtype=F64)
    if c.num_slots == 0:
        return
    b = d.draw(st.integers(0, c.batch_size - 1))
    k = d.draw(st.integers(0, c.num_slots - 1))
    bad = d.draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    p = c.pos.clone()
    p[b, k, d.draw(st.integers(0, 1))] = bad
    if bool(c.valid[b, k]):
        with pytest.raises(LocalScoreError, match=f"object {k} of image {b}"):
            Conditions(p, None, c.valid)
    else:  # padding may hold anything
        assert bool(torch.isfinite(Conditions(p, None, c.valid).pos).all())


@pytest.mark.parametrize(
    ("positions", "attrs", "msg"),
    [
        (torch.zeros(1, 1, 2), None, "expected a list with one entry per image"),
        ("abc", None, "expected a list with one entry per image"),
        ([], None, "is empty"),
        ([[(1.0, 2.0, 3.0)]], None, r"image 0: positions have shape \(1, 3\)"),
        ([[(1.0, 2.0)], [1.0, 2.0]], None, r"image 1: positions have shape \(2,\)"),
        ([1.0, 2.0], None, "image 0: positions entry is float"),
        ([[(1.0, 2.0)]], [[[1.0]], [[2.0]]], "`attrs` has 2 entries but `positions` has 1"),
        ([[(1.0, 2.0)]], [[]], "image 0: 1 positions but no attributes"),
        ([[(1.0, 2.0)]], [[1.0, 2.0]], r"image 0: attrs have shape \(2,\)"),
        ([[(1.0, 2.0), (3.0, 4.0)]], [[[1.0]]], "with k = 2 objects"),
        ([[(1.0, 2.0)], [(3.0, 4.0)]], [[[1.0]], [[1.0, 2.0]]], r"different lengths \[1, 2\]"),
        ([[], []], [[], []], "A is unknown"),
        ([[(1.0, 2.0)]], [None], "image 0: attrs entry is NoneType"),
        ([[(float("nan"), 2.0)]], None, "non-finite"),
    ],
)
def test_from_lists_rejects(positions, attrs, msg: str) -> None:
    with pytest.raises(LocalScoreError, match=msg):
        Conditions.from_lists(positions, attrs)


def test_from_lists_rejects_integer_dtype() -> None:
    with pytest.raises(LocalScoreError, match=r"floating torch\.dtype"):
        Conditions.from_lists([[(1, 2)]], dtype=torch.int64)


def test_operations_reject_bad_arguments() -> None:
    c = Conditions.from_lists([[(1.0, 1.0), (2.0, 2.0)], [(3.0, 3.0)]])
    for bad in (2, -3, 1.0, True, torch.tensor(0)):
        with pytest.raises(LocalScoreError, match="slot index"):
            c.select(bad)  # type: ignore[arg-type]
        with pytest.raises(LocalScoreError, match="slot index"):
            c.drop(bad)  # type: ignore[arg-type]
    for bad in (1, 2.0, "3", True):
        with pytest.raises(LocalScoreError, match="num_slots"):
            c.pad_to(bad)  # type: ignore[arg-type]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(LocalScoreError, match="repeats"):
            c.repeat_interleave(bad)  # type: ignore[arg-type]
    for bad in (2, -3, 1.5, True, (0, 1), [0, 5], slice(5, None), "a"):
        with pytest.raises(LocalScoreError, match=r"Conditions\[\.\.\.\]"):
            c[bad]  # type: ignore[index]
    with pytest.raises(LocalScoreError, match="floating dtype"):
        c.to(dtype=torch.int32)
    with pytest.raises(LocalScoreError, match="floating dtype"):
        c.to(dtype="float64")  # type: ignore[arg-type]
    with pytest.raises(LocalScoreError, match="not a torch device"):
        c.to("no-such-device")


def test_cat_rejects() -> None:
    a = Conditions.from_lists([[(1.0, 1.0)]])
    with_attr = Conditions.from_lists([[(1.0, 1.0)]], attrs=[[[1.0]]])
    with pytest.raises(LocalScoreError, match="empty list"):
        Conditions.cat([])
    with pytest.raises(LocalScoreError, match="item 1 is"):
        Conditions.cat([a, "b"])  # type: ignore[list-item]
    with pytest.raises(LocalScoreError, match="different attribute lengths"):
        Conditions.cat([a, with_attr])
    with pytest.raises(LocalScoreError, match="different devices"):
        Conditions.cat([a, a.to("meta")])
    mixed = Conditions.cat([a, a.to(dtype=F64)])
    assert mixed.dtype == a.dtype and mixed.batch_size == 2


def test_empty_rejects_bad_attr_dim() -> None:
    for bad in (0, -2, 1.0, True):
        with pytest.raises(LocalScoreError, match="attr_dim"):
            Conditions.empty(2, attr_dim=bad)  # type: ignore[arg-type]


def test_ablate_keeps_the_slot_and_the_protocol_holds() -> None:
    from localscore.conditions import ConditionSet

    c = Conditions.from_lists([[(1.0, 2.0), (3.0, 4.0)], [(5.0, 6.0)]], attrs=[[[1.0], [2.0]], [[3.0]]])
    a = c.ablate(1)
    assert a.num_slots == 2 and a.valid.tolist() == [[True, False], [True, False]]
    assert torch.equal(a.pos, c.pos) and a.attr is not None and torch.equal(a.attr, c.attr)
    # the model sees the same set as with drop (which removes the slot): the same valid objects
    assert torch.equal(a.compact().pos, c.drop(1).compact().pos)
    with pytest.raises(LocalScoreError, match="out of range"):
        c.ablate(2)
    assert isinstance(c, ConditionSet) and not isinstance(c.pos, ConditionSet)
    for name in ("select", "ablate", "drop_all", "singletons", "pad_to", "repeat_interleave", "to", "cat"):
        assert callable(getattr(c, name))
