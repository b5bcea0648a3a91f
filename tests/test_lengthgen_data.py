"""Scene data: attributes, layouts, the renderer against analytic geometry, streams and dataset files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from localscore import Conditions, LocalScoreError
from localscore.lengthgen.data import (
    ATTR_DIM,
    COLOR_RGB,
    COLORS,
    SHAPES,
    SIZES,
    DatasetStream,
    Scene,
    SceneConfig,
    SceneStream,
    bounding_radius,
    color_concepts,
    color_index,
    coverage,
    decode_attributes,
    encode_attributes,
    label_scene,
    layout_to_dict,
    load_layout,
    parse_layout,
    read_dataset,
    render_scene,
    sample_scenes,
    save_layout,
    write_dataset,
)


def _scene(objs: list[tuple[float, float, int, int, int]], res: int = 32) -> Scene:
    """One image from (row, col, colour, shape, size) tuples."""
    K = len(objs)
    pos = torch.tensor([[o[0], o[1]] for o in objs], dtype=torch.float32).view(1, K, 2)
    idx = [torch.tensor([[o[i] for o in objs]], dtype=torch.long).view(1, K) for i in (2, 3, 4)]
    return Scene(pos, idx[0], idx[1], idx[2], torch.ones(1, K, dtype=torch.bool), res)


# ----------------------------------------------------------------------------- attributes
@given(st.lists(st.tuples(st.integers(-1, 7), st.integers(-1, 2), st.integers(-1, 1)), min_size=1, max_size=12))
def test_attribute_encoding_round_trips(items: list[tuple[int, int, int]]) -> None:
    c, s, z = (torch.tensor([it[i] for it in items]) for i in range(3))
    a = encode_attributes(c, s, z)
    assert a.shape == (len(items), ATTR_DIM)
    # each specified block is exactly one-hot, unspecified blocks are zero
    assert a.sum(-1).tolist() == [float((ci >= 0) + (si >= 0) + (zi >= 0)) for ci, si, zi in items]
    c2, s2, z2 = decode_attributes(a)
    assert c2.tolist() == c.tolist() and s2.tolist() == s.tolist() and z2.tolist() == z.tolist()


def test_attribute_layout_is_documented_order() -> None:
    a = encode_attributes(torch.tensor([color_index("cyan")]), torch.tensor([2]), torch.tensor([1]))[0]
    assert a.nonzero().flatten().tolist() == [6, 8 + 2, 11 + 1]
    assert COLORS == ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
    assert SHAPES == ("disc", "square", "triangle") and SIZES == ("small", "large")


def test_attribute_errors() -> None:
    with pytest.raises(LocalScoreError, match="unknown colour 'pink'"):
        color_index("pink")
    with pytest.raises(LocalScoreError, match="indices"):
        encode_attributes(torch.tensor([8]), torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(LocalScoreError, match="integer"):
        encode_attributes(torch.tensor([0.0]), torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(LocalScoreError, match=r"\[\.\.\., 13\]"):
        decode_attributes(torch.zeros(2, 12))


# ----------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("bad", [dict(resolution=8), dict(resolution=200), dict(counts=()), dict(counts=(-1,)),
                                 dict(colors=("pink",)), dict(shapes=()), dict(radii=(3.0, 2.0)),
                                 dict(margin=-1.0), dict(background="stars"), dict(labelling="some"),
                                 dict(shading=2.0), dict(background_color=(1, 2, 3))])
def test_scene_config_rejects_bad_values(bad: dict) -> None:
    with pytest.raises(LocalScoreError, match="SceneConfig"):
        SceneConfig(**bad)


def test_scene_config_round_trips_through_json() -> None:
    cfg = SceneConfig(resolution=48, counts=(2, 5), colors=("red", "blue"), background="textured", shadow=0.2)
    assert SceneConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(LocalScoreError, match="unknown keys"):
        SceneConfig.from_dict({"resolutoin": 32})


# ----------------------------------------------------------------------------- layouts of random scenes
@given(res=st.sampled_from([16, 24, 32, 64]), n=st.integers(0, 10), seed=st.integers(0, 2**31 - 1))
def test_sampled_scenes_respect_margin_and_separation(res: int, n: int, seed: int) -> None:
    cfg = SceneConfig(resolution=res, counts=(n,))
    s = sample_scenes(cfg, 3, generator=torch.Generator().manual_seed(seed))
    assert s.counts().tolist() == [n] * 3
    b = bounding_radius(s.shape, s.size, cfg.object_radii())
    for i in range(3):
        p, bi = s.pos[i, :n], b[i, :n]
        assert bool(((p >= cfg.margin + bi[:, None] - 1e-4) & (p <= res - 1 - cfg.margin - bi[:, None] + 1e-4)).all())
        d = torch.cdist(p, p) + torch.eye(n) * 1e9
        assert bool((d >= bi[:, None] + bi[None, :] + cfg.gap - 1e-4).all())


def test_sampling_is_deterministic_and_seed_dependent() -> None:
    cfg = SceneConfig(resolution=32, counts=(1, 2, 3), background="textured")
    a = sample_scenes(cfg, 16, generator=torch.Generator().manual_seed(7))
    b = sample_scenes(cfg, 16, generator=torch.Generator().manual_seed(7))
    c = sample_scenes(cfg, 16, generator=torch.Generator().manual_seed(8))
    assert torch.equal(render_scene(a, cfg), render_scene(b, cfg))
    assert not torch.equal(a.pos, c.pos)
    assert set(a.counts().tolist()) <= {1, 2, 3}


def test_sampling_draws_counts_and_attributes_uniformly() -> None:
    cfg = SceneConfig(resolution=32, counts=(1, 3, 5), colors=("red", "cyan"), shapes=("square",))
    s = sample_scenes(cfg, 3000, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(s.counts(), minlength=6)[[1, 3, 5]].float() / 3000
    assert bool(((freq - 1 / 3).abs() < 0.03).all())      # 3.5 binomial sd
    col = s.color[s.valid]
    assert set(col.unique().tolist()) == {1, 6} and abs(float((col == 1).float().mean()) - 0.5) < 0.03
    assert set(s.shape[s.valid].unique().tolist()) == {1}


def test_impossible_crowding_raises_a_clear_error() -> None:
    cfg = SceneConfig(resolution=16, counts=(30,), max_rounds=3)
    with pytest.raises(LocalScoreError, match="could not place 30 objects"):
        sample_scenes(cfg, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(LocalScoreError, match="do not fit"):
        sample_scenes(SceneConfig(resolution=16, radii=(8.0, 9.0), counts=(1,)), 1)


# ----------------------------------------------------------------------------- the renderer vs geometry
def test_coverage_areas_match_the_analytic_shape_areas() -> None:
    r = torch.tensor([10.3])
    pos = torch.tensor([[31.37, 30.81]])
    expected = {0: math.pi * 10.3**2, 1: (2 * 0.85 * 10.3) ** 2, 2: 3 * math.sqrt(3) / 4 * (1.25 * 10.3) ** 2}
    for shape, area in expected.items():
        a = coverage(pos, torch.tensor([shape]), r, 64, 64)
        assert float(a.sum()) == pytest.approx(area, rel=3e-3)


def test_coverage_is_the_box_filter_of_an_axis_aligned_edge() -> None:
    # a square's left edge at col c0 - h: pixel j covers [j - 0.5, j + 0.5]; covered length = clamp(j + 0.5 - edge)
    c0, h = 10.3, 0.85 * 4.0
    a = coverage(torch.tensor([[10.0, c0]]), torch.tensor([1]), torch.tensor([4.0]), 21, 21)[0, 10]
    edge_l, edge_r = c0 - h, c0 + h
    cols = torch.arange(21, dtype=torch.float32)
    exact = ((torch.minimum(cols + 0.5, torch.tensor(edge_r)) - torch.maximum(cols - 0.5, torch.tensor(edge_l)))
             .clamp(0, 1))
    torch.testing.assert_close(a, exact, atol=1e-5, rtol=0)


@given(dr=st.floats(-0.5, 0.5), dc=st.floats(-0.5, 0.5), shape=st.integers(0, 2))
def test_coverage_centroid_is_the_object_centre(dr: float, dc: float, shape: int) -> None:
    pos = torch.tensor([[15.0 + dr, 16.0 + dc]], dtype=torch.float64)
    a = coverage(pos, torch.tensor([shape]), torch.tensor([5.0], dtype=torch.float64), 32, 32)[0]
    rows, cols = torch.meshgrid(torch.arange(32.0, dtype=torch.float64), torch.arange(32.0, dtype=torch.float64),
                                indexing="ij")
    cen = torch.stack([(a * rows).sum(), (a * cols).sum()]) / a.sum()
    # sampling a box-filtered shape at pixel centres does not preserve its centroid exactly; measured worst
    # cases at r = 5 px: disc 0.024 (0.0304 seen once), square 0.012, triangle 0.065 px (the ramp is
    # coarsest near vertices)
    assert float((cen - pos[0]).abs().max()) < {0: 0.04, 1: 0.02, 2: 0.08}[shape]


def test_render_composites_background_and_flat_colours_exactly() -> None:
    cfg = SceneConfig(resolution=32)
    s = _scene([(8.0, 8.0, 1, 0, 1), (20.3, 22.6, 6, 1, 0)])
    img = render_scene(s, cfg)
    bg = torch.tensor(cfg.background_color)
    assert torch.equal(img[0, :, 0, 31], bg)                                  # far from both objects
    torch.testing.assert_close(img[0, :, 8, 8], COLOR_RGB[1])                 # inside the red disc
    a = coverage(s.pos[0], s.shape[0], torch.tensor([2.88, 1.92]), 32, 32)   # default radii at 32
    expected = bg.view(3, 1, 1) * (1 - a[0]) * (1 - a[1]) + COLOR_RGB[1].view(3, 1, 1) * a[0] * (1 - a[1]) \
        + COLOR_RGB[6].view(3, 1, 1) * a[1]
    torch.testing.assert_close(img[0], expected, atol=1e-6, rtol=0)


def test_shading_preserves_the_mean_colour_of_a_disc_and_shadow_darkens_down_right() -> None:
    s = _scene([(15.0, 15.0, 2, 0, 1)], res=64)
    flat = render_scene(s, SceneConfig(resolution=64))
    shaded = render_scene(s, SceneConfig(resolution=64, shading=0.15))   # no channel clips at 1
    inside = coverage(s.pos[0], s.shape[0], torch.tensor([0.09 * 64]), 64, 64)[0] == 1
    torch.testing.assert_close(shaded[0][:, inside].mean(1), flat[0][:, inside].mean(1), atol=2e-3, rtol=0)
    assert float(shaded[0, 2, 12, 12]) > float(shaded[0, 2, 18, 18])           # lit from the top left
    shadow = render_scene(s, SceneConfig(resolution=64, shadow=0.4))
    assert float(shadow[0, 0, 21, 21]) < 0.75 - 0.05 and float(shadow[0, 0, 8, 8]) == pytest.approx(0.75)


def test_render_is_differentiable_in_positions_and_checks_inputs() -> None:
    s = _scene([(10.0, 10.0, 0, 2, 1)])
    pos = s.pos.clone().requires_grad_(True)
    img = render_scene(Scene(pos, s.color, s.shape, s.size, s.valid, 32))
    img.sum().backward()
    assert pos.grad is not None and bool(torch.isfinite(pos.grad).all()) and float(pos.grad.abs().sum()) > 0
    with pytest.raises(LocalScoreError, match="resolution"):
        render_scene(s, SceneConfig(resolution=16))
    with pytest.raises(LocalScoreError, match="unspecified"):
        render_scene(Scene(s.pos, s.color, -torch.ones_like(s.shape), s.size, s.valid, 32))


@pytest.mark.parametrize("res", [16, 37, 128])
def test_every_resolution_renders(res: int) -> None:
    cfg = SceneConfig(resolution=res, counts=(4,), background="textured", shading=0.2, shadow=0.2)
    img = render_scene(sample_scenes(cfg, 2, generator=torch.Generator().manual_seed(0)), cfg)
    assert img.shape == (2, 3, res, res) and float(img.min()) >= 0 and float(img.max()) <= 1
    assert float(img.std()) > 0.02


# ----------------------------------------------------------------------------- labelling
def test_labelling_all_and_one() -> None:
    cfg = SceneConfig(resolution=32, counts=(0, 1, 4))
    s = sample_scenes(cfg, 600, generator=torch.Generator().manual_seed(0))
    c_all = label_scene(s, "all")
    assert torch.equal(c_all.pos, s.pos) and torch.equal(c_all.valid, s.valid)
    assert c_all.attr is not None and torch.equal(decode_attributes(c_all.attr)[0][s.valid], s.color[s.valid])
    c_one = label_scene(s, "one", generator=torch.Generator().manual_seed(1))
    assert c_one.num_slots == 1 and c_one.counts().tolist() == (s.counts() > 0).long().tolist()
    hits = torch.zeros(4)
    for b in range(600):
        if not bool(c_one.valid[b, 0]):
            continue
        k = int(((s.pos[b] - c_one.pos[b, 0]).abs().sum(-1) < 1e-6).nonzero()[0])   # the labelled object
        assert torch.equal(s.attributes()[b, k], c_one.attr[b, 0])                   # type: ignore[index]
        if int(s.counts()[b]) == 4:
            hits[k] += 1
    assert float(hits.min()) > 0.15 * float(hits.sum())                              # each slot ~ 1/4
    with pytest.raises(LocalScoreError, match="labelling"):
        label_scene(s, "two")  # type: ignore[arg-type]


def test_labelling_color_keeps_each_objects_colour_and_nothing_else() -> None:
    cfg = SceneConfig(resolution=32, counts=(0, 1, 3))
    s = sample_scenes(cfg, 200, generator=torch.Generator().manual_seed(2))
    c = label_scene(s, "color")
    assert torch.equal(c.valid, s.valid) and c.attr is not None and c.attr.shape[-1] == ATTR_DIM
    assert torch.equal(c.attr[..., :8].argmax(-1)[s.valid], s.color[s.valid])
    assert torch.equal(c.attr.sum(-1), s.valid.float())           # the colour one-hot only: no shape, no size
    assert bool((c.pos == 15.5).all())                            # one place for every concept: the centre
    # the same colours in other places, shapes and sizes give the same conditioner set
    moved = Scene(s.pos.flip(0), s.color, s.shape.flip(0), s.size.flip(0), s.valid, 32)
    d = label_scene(moved, "color")
    assert torch.equal(d.attr, c.attr) and torch.equal(d.pos, c.pos)  # type: ignore[arg-type]
    assert SceneConfig(labelling="color").labelling == "color"


def test_color_concepts_builds_padded_sets_and_explains_bad_names() -> None:
    c = color_concepts([["yellow", "Blue"], [], ["red"]], resolution=16, dtype=torch.float64)
    assert c.counts().tolist() == [2, 0, 1] and c.attr is not None and c.attr.dtype == torch.float64
    assert c.attr[0, :, :8].argmax(-1).tolist() == [COLORS.index("yellow"), COLORS.index("blue")]
    assert float(c.attr[1].abs().sum()) == 0 and bool((c.pos == 7.5).all())
    # what label_scene("color") gives for the same objects
    s = _scene([(3.0, 4.0, COLORS.index("red"), 1, 0)], res=16)
    assert torch.equal(label_scene(s, "color").attr, color_concepts([["red"]], resolution=16).attr)  # type: ignore[arg-type]
    for bad, match in ((["yellow"], "list of B lists"), ([["orange"]], "orange"), ([], "empty"),
                       ("yellow", "list of B lists"), ([[3]], "colors\\[0\\]\\[0\\]")):
        with pytest.raises(LocalScoreError, match=match):
            color_concepts(bad)  # type: ignore[arg-type]
    with pytest.raises(LocalScoreError, match="resolution"):
        color_concepts([["red"]], resolution=0)
    with pytest.raises(LocalScoreError, match="dtype"):
        color_concepts([["red"]], dtype=torch.long)


# ----------------------------------------------------------------------------- streams and files
def test_scene_stream_is_deterministic_resumable_and_shards_the_global_batch() -> None:
    cfg = SceneConfig(resolution=16, counts=(1, 2), labelling="one")
    a = SceneStream(cfg, 6, seed=4)
    first = next(a)
    state = a.state_dict()
    second = next(a)
    b = SceneStream(cfg, 6, seed=999)
    b.load_state_dict(state)
    again = next(b)
    assert torch.equal(second.images, again.images) and torch.equal(second.cond.pos, again.cond.pos)
    assert not torch.equal(first.images, second.images)
    assert float(first.images.min()) >= -1 and float(first.images.max()) <= 1
    shards = []
    for rank in range(3):
        s = SceneStream(cfg, 6, seed=4)
        s.set_shard(rank, 3)
        shards.append(next(s))
    assert torch.equal(torch.cat([x.images for x in shards]), first.images)
    assert torch.equal(Conditions.cat([x.cond for x in shards]).pos, first.cond.pos)
    with pytest.raises(LocalScoreError, match="divisible"):
        SceneStream(cfg, 6).set_shard(0, 4)
    with pytest.raises(LocalScoreError, match="SceneStream state"):
        b.load_state_dict({"kind": "other"})


def test_dataset_file_round_trip_and_stream(tmp_path: Path) -> None:
    cfg = SceneConfig(resolution=16, counts=(1, 2, 3), background="textured")
    path = write_dataset(tmp_path / "d.pt", cfg, 20, seed=2, chunk=8)
    ds = read_dataset(path)
    assert len(ds) == 20 and ds.config == cfg and ds.seed == 2
    truth = render_scene(ds.scene, cfg)
    assert float((ds.image(slice(None)) - truth).abs().max()) <= 1 / 510 + 1e-6
    exact = read_dataset(write_dataset(tmp_path / "f.pt", cfg, 20, seed=2, chunk=8, storage="float32"))
    assert torch.equal(exact.images, truth)
    st_a = DatasetStream(ds, 8, seed=1)
    seen = torch.cat([next(st_a).images for _ in range(5)])                   # 40 images = two epochs
    assert seen.shape[0] == 40
    state = st_a.state_dict()
    nxt = next(st_a)
    st_b = DatasetStream(ds, 8, seed=5)
    st_b.load_state_dict(state)
    assert torch.equal(next(st_b).images, nxt.images)
    # one epoch visits every image once
    st_c = DatasetStream(ds, 20, seed=3, value_range=(0.0, 1.0))
    ep = next(st_c).images
    assert torch.equal(ep.sort(0).values, ds.image(slice(None)).sort(0).values)


def test_dataset_file_errors(tmp_path: Path) -> None:
    path = write_dataset(tmp_path / "d.pt", SceneConfig(resolution=16), 4)
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(LocalScoreError, match="truncated"):
        read_dataset(tmp_path / "cut.pt")
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(LocalScoreError, match="not a localscore-scenes file"):
        read_dataset(tmp_path / "other.pt")
    with pytest.raises(LocalScoreError, match="no file"):
        read_dataset(tmp_path / "missing.pt")


# ----------------------------------------------------------------------------- layout files
def test_layout_parsing_and_round_trip(tmp_path: Path) -> None:
    d = {"size": 32, "images": [[{"pos": [4, 5.5], "color": "Red", "shape": "triangle", "size": "large"},
                                 {"pos": [20, 20], "color": "cyan"}], []]}
    s = parse_layout(json.dumps(d), default_shape="disc", default_size="small")
    assert s.counts().tolist() == [2, 0] and s.color[0].tolist() == [1, 6]
    assert s.shape[0].tolist() == [2, 0] and s.size[0].tolist() == [1, 0]
    assert parse_layout(d).shape[0, 1] == -1
    save_layout(tmp_path / "l.json", s)
    again = load_layout(tmp_path / "l.json")
    assert layout_to_dict(again) == layout_to_dict(s)
    assert render_scene(again).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("layout, message", [
    ('{"size": 32, "images": [[{"pos": [1, 2], "color": "pink"}]]}', "unknown colour 'pink'"),
    ('{"size": 32, "images": [[{"pos": [1, 40], "color": "red"}]]}', "off the 32x32 image"),
    ('{"size": 32, "images": [[{"pos": [1], "color": "red"}]]}', "expected \\[row, col\\]"),
    ('{"size": 32, "images": [[{"color": "red"}]]}', "has no 'pos'"),
    ('{"size": 32, "images": [[{"pos": [1, 2], "color": "red", "shape": "star"}]]}', "unknown shape 'star'"),
    ('{"size": 32, "images": [[{"pos": [1, 2], "color": "red", "hue": 3}]]}', "unknown keys"),
    ('{"size": 8, "images": [[]]}', "16..128"),
    ('{"size": 32, "images": []}', "non-empty list"),
    ('{"size": 32, "images": [[{"pos": [1, 2], "color": "red"}]', "not valid JSON"),
    ('[1, 2]', "expected a JSON object"),
])
def test_layout_errors_are_clear(layout: str, message: str) -> None:
    with pytest.raises(LocalScoreError, match=message):
        parse_layout(layout)


def test_layout_object_limit_and_missing_file(tmp_path: Path) -> None:
    d = {"size": 16, "images": [[{"pos": [i, i], "color": "red"} for i in range(5)]]}
    with pytest.raises(LocalScoreError, match="more than the maximum of 4"):
        parse_layout(d, max_objects=4)
    with pytest.raises(LocalScoreError, match="cannot read"):
        load_layout(tmp_path / "nope.json")


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-50, 200) | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["red", "pink", "disc", "star", "small", "huge", "", "pos", "color"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["size", "images", "pos", "color", "shape", "hue"]), inner, max_size=4),
    max_leaves=20,
)


_coord = st.integers(0, 31) | st.floats(0.0, 31.0, allow_nan=False)
_names = {"color": COLORS, "shape": SHAPES, "size": SIZES}
def _layout_object(pos: list[float], color: str, extra: dict[str, str]) -> dict[str, object]:
    return {"pos": pos, "color": color, **extra}


_valid_object = st.builds(
    _layout_object, st.lists(_coord, min_size=2, max_size=2), st.sampled_from(COLORS),
    st.fixed_dictionaries({}, optional={"shape": st.sampled_from(SHAPES), "size": st.sampled_from(SIZES)}),
)


@given(st.lists(st.lists(_valid_object, max_size=4), min_size=1, max_size=3))
def test_parse_layout_accepts_every_valid_layout(images: list[list[dict]]) -> None:
    """The other side of the fuzz below (where nearly every draw is malformed): every well-formed layout
    parses, and the scene holds exactly the objects it lists."""
    scene = parse_layout({"size": 32, "images": images})
    assert scene.counts().tolist() == [len(objs) for objs in images]
    for b, objs in enumerate(images):
        for k, obj in enumerate(objs):
            assert scene.pos[b, k].tolist() == torch.tensor([float(v) for v in obj["pos"]]).tolist()  # float32
            for key, field in (("color", scene.color), ("shape", scene.shape), ("size", scene.size)):
                want = _names[key].index(obj[key]) if key in obj else -1
                assert int(field[b, k]) == want, (b, k, key)


@given(_json)
def test_parse_layout_never_fails_with_anything_but_a_clear_error(value: object) -> None:
    for candidate in (value, {"size": 32, "images": value}, {"size": 32, "images": [value]},
                      {"size": 32, "images": [[value]]}):
        try:
            scene = parse_layout(candidate)
        except LocalScoreError as e:
            assert str(e).startswith("parse_layout: ")
        else:
            assert isinstance(scene, Scene)
            assert bool((scene.pos >= 0).all() & (scene.pos <= scene.resolution - 1).all())


# ----------------------------------------------------------------------------- hostile scenes (issue 18)
def _one(pos: list[list[float]], color: list[int], shape: list[int], size: list[int], valid: list[bool],
         res: int = 16) -> Scene:
    L = torch.long
    return Scene(torch.tensor([pos]), torch.tensor([color], dtype=L), torch.tensor([shape], dtype=L),
                 torch.tensor([size], dtype=L), torch.tensor([valid]), res)


def test_padding_slots_never_reach_the_image() -> None:
    clean = render_scene(_one([[4.0, 4.0], [0.0, 0.0]], [1, 0], [0, 0], [0, 0], [True, False]))
    for junk in ([float("nan"), 0.0], [float("inf"), -float("inf")], [1e30, 3.0]):
        for ids in ((0, 0, 0), (99, 7, -5)):    # padding may hold any ids too
            s = _one([[4.0, 4.0], junk], [1, ids[0]], [0, ids[1]], [0, ids[2]], [True, False])
            img = render_scene(s, SceneConfig(resolution=16, shadow=0.3, shading=0.2))
            assert torch.isfinite(img).all()
            assert torch.equal(render_scene(s), clean)


@pytest.mark.parametrize(("pos", "ids", "message"), [
    ([float("nan"), 4.0], (1, 0, 0), "position .* is not finite"),
    ([4.0, float("inf")], (1, 0, 0), "position .* is not finite"),
    ([4.0, 4.0], (9, 0, 0), "`color` index 9 is out of range; expected 0..7"),
    ([4.0, 4.0], (-1, 0, 0), "`color` index -1 is out of range"),
    ([4.0, 4.0], (1, 5, 0), "`shape` index 5 is out of range; expected -1..2"),
    ([4.0, 4.0], (1, 0, 3), "`size` index 3 is out of range; expected -1..1"),
    ([4.0, 4.0], (1, 0, -2), "`size` index -2 is out of range"),
])
def test_valid_slots_are_range_checked(pos: list[float], ids: tuple[int, int, int], message: str) -> None:
    with pytest.raises(LocalScoreError, match=message):
        _one([pos], [ids[0]], [ids[1]], [ids[2]], [True])


def test_scene_sizes_are_bounded() -> None:
    with pytest.raises(LocalScoreError, match="over the limit of 100 objects"):
        SceneConfig(counts=(10**6,))
    with pytest.raises(LocalScoreError, match="resolution"):
        Scene(torch.zeros(1, 0, 2), *(torch.zeros(1, 0, dtype=torch.long),) * 3, torch.zeros(1, 0, dtype=torch.bool),
              10**6)
    with pytest.raises(LocalScoreError, match="integer indices"):
        Scene(torch.zeros(1, 1, 2), torch.zeros(1, 1), *(torch.zeros(1, 1, dtype=torch.long),) * 2,
              torch.ones(1, 1, dtype=torch.bool), 16)


def test_impossible_placements_fail_at_once() -> None:
    import time

    t0 = time.perf_counter()
    with pytest.raises(LocalScoreError, match="cannot fit"):
        sample_scenes(SceneConfig(resolution=16, counts=(100,)), 2, generator=torch.Generator().manual_seed(0))
    assert time.perf_counter() - t0 < 2


def test_layout_numbers_and_sizes_are_bounded(tmp_path: Path) -> None:
    from localscore.lengthgen.data import load_layout

    cases = {
        b'{"size": 16, "images": [[{"pos": [' + b"9" * 400 + b', 5], "color": "red"}]]}': "400 digits",
        b'{"size": 16, "images": [[{"pos": [1e400, 5], "color": "red"}]]}': "overflows a float",
        b'{"size": 16, "images": [[{"pos": [' + b"9" * 25 + b', 5], "color": "red"}]]}': "off the 16x16 image",
        b'{"size": 16, "images": [[{"pos": [NaN, 5], "color": "red"}]]}': "NaN",
        b"[" * 50_000 + b"]" * 50_000: "nested too deeply",
        b'{"size": 16, "images": [["\xff"]]}': "not UTF-8",
    }
    for data, message in cases.items():
        (tmp_path / "l.json").write_bytes(data)
        with pytest.raises(LocalScoreError, match=message):
            load_layout(tmp_path / "l.json")
    with pytest.raises(LocalScoreError, match="is a folder"):
        load_layout(tmp_path)
    (tmp_path / "l.json").write_text(json.dumps({"size": 16, "images": [[]] * 100_000}))
    assert load_layout(tmp_path / "l.json").batch_size == 100_000


def test_scene_rejects_a_texture_of_the_wrong_shape() -> None:
    # a texture of the wrong shape was accepted and broke (or silently broadcast in) render_scene later
    pos, ids = torch.zeros(2, 3, 2), torch.zeros(2, 3, dtype=torch.long)
    valid = torch.ones(2, 3, dtype=torch.bool)
    Scene(pos, ids, ids, ids, valid, 16, torch.rand(2, 1, 4, 4))  # positive control: [B, 1, h, w]
    wrong = (torch.rand(5), torch.rand(3, 1, 4, 4), torch.rand(2, 3, 4, 4), torch.zeros(2, 1, 4, 4, dtype=torch.long))
    for bad in wrong:
        with pytest.raises(LocalScoreError, match=r"`texture` is .* expected None or a float tensor \[B, 1, h, w\]"):
            Scene(pos, ids, ids, ids, valid, 16, bad)
