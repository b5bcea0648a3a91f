"""The sparse (neighbour-list) conditioning path: the list itself, agreement with the dense path and with the
explicit formulas, exact locality through it (dense Jacobians), and the automatic choice."""

from __future__ import annotations

import math

import pytest
import torch
from _nn_helpers import SMALL, cheb_to_points, jacobian_cond
from hypothesis import given
from hypothesis import strategies as st

from localscore import Conditions, LocalScoreError
from localscore.masks import DiscRule, disc_masks, gaussian_masks
from localscore.nn import (
    CondContext,
    FourierFeatures,
    LocalConditionalDenoiser,
    LocalNetConfig,
    LocalScoreNet,
    MaskedCrossAttention,
    RenderedConditioning,
    choose_sparse,
    enforce_locality,
    neighbor_list,
)

NO_BATCH_RULE = "ignore:There is a performance drop:UserWarning"  # embedding_bag under jacrev's vmap


def small(sparse: str = "auto", **kw: object) -> LocalConditionalDenoiser:
    return LocalConditionalDenoiser(sparse=sparse, **{**SMALL, **kw}).double()  # type: ignore[arg-type]


def random_scene(B: int, K: int, H: int, W: int, seed: int, A: int = 3, p_valid: float = 0.8) -> Conditions:
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(B, K, 2, generator=g, dtype=torch.float64) * torch.tensor([H - 1.0, W - 1.0], dtype=torch.float64)
    attr = torch.randn(B, K, A, generator=g, dtype=torch.float64)
    return Conditions(pos, attr, torch.rand(B, K, generator=g) < p_valid)


# ------------------------------------------------------------------ the list itself


@given(B=st.integers(1, 3), K=st.integers(0, 9), H=st.integers(1, 5), W=st.integers(1, 5),
       soft=st.booleans(), density=st.floats(0.0, 1.0), seed=st.integers(0, 10_000))
def test_neighbor_list_lists_exactly_the_allowed_slots(B: int, K: int, H: int, W: int, soft: bool, density: float,
                                                       seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(B, K, H, W, generator=g, dtype=torch.float64)
    mask = torch.where(u < density, u, torch.zeros((), dtype=torch.float64)) if soft else u < density
    valid = torch.rand(B, K, generator=g) < 0.7
    nb = neighbor_list(mask, valid)
    allowed = (mask > 0) & valid[:, :, None, None]
    counts = allowed.sum(1)
    assert nb.max_neighbors == (int(counts.max()) if counts.numel() else 0)
    assert nb.num_slots == K and nb.size == (H, W) and nb.soft == soft
    for b in range(B):
        for i in range(H):
            for j in range(W):
                q = i * W + j
                ks = [k for k in range(K) if allowed[b, k, i, j]]
                c = len(ks)
                assert nb.index[b, q, :c].tolist() == ks  # increasing k
                assert bool(nb.valid[b, q, :c].all()) and not bool(nb.valid[b, q, c:].any())
                assert bool((nb.index[b, q, c:] == -1).all()) and bool((nb.weight[b, q, c:] == 0).all())
                expected = [float(mask[b, k, i, j]) for k in ks] if soft else [1.0] * c
                assert nb.weight[b, q, :c].tolist() == expected


def test_neighbor_list_weights_are_differentiable_in_a_soft_mask() -> None:
    cond = Conditions.from_lists([[(1.0, 1.0), (2.0, 3.0)]])
    pos = cond.pos.double().requires_grad_()
    m = gaussian_masks(Conditions(pos, None, cond.valid), (4, 5), 1.0, truncate=2.0)
    nb = neighbor_list(m, cond.valid)
    (g,) = torch.autograd.grad(nb.weight.sum(), pos, retain_graph=True)
    (g_dense,) = torch.autograd.grad(m.sum(), pos)
    assert torch.allclose(g, g_dense, atol=1e-12) and bool((g != 0).any())


def test_neighbor_list_bad_input() -> None:
    with pytest.raises(LocalScoreError, match="mask"):
        neighbor_list(torch.zeros(2, 3, 4), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(LocalScoreError, match="valid"):
        neighbor_list(torch.zeros(2, 3, 4, 4, dtype=torch.bool), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(LocalScoreError, match="mode"):
        choose_sparse(None, torch.ones(1, 1, dtype=torch.bool), "fast")  # type: ignore[arg-type]
    with pytest.raises(LocalScoreError, match="sparse"):
        LocalScoreNet(LocalNetConfig(**SMALL), sparse="yes")  # type: ignore[arg-type]
    D = small(depth=1)
    D.inner.sparse = "fast"  # type: ignore[assignment]
    with pytest.raises(LocalScoreError, match="sparse"):
        D(torch.randn(1, 3, 6, 6, dtype=torch.float64), 1.0, random_scene(1, 2, 6, 6, 0))


# ------------------------------------------------------------------ same function as the dense path


@pytest.mark.parametrize("conditioning", ["attention", "render"])
@pytest.mark.parametrize(("rule", "radius"), [("disc", 2.0), ("gaussian", 0.8), ("box", 1.0)])
def test_sparse_and_dense_networks_agree_in_value_and_gradient(conditioning: str, rule: str, radius: float) -> None:
    """Outputs and gradients (input, positions, attributes, every parameter) to float64 round-off, with
    padding, pixels that see nothing, and pixels that see several objects."""
    torch.manual_seed(3)
    D = small(depth=2, conditioning=conditioning, cond_rule=rule, cond_radius=radius)
    B, K, H = 3, 24, 11
    cond = random_scene(B, K, H, H, seed=5)
    x = torch.randn(B, 3, H, H, dtype=torch.float64)
    sigma = torch.tensor([0.05, 0.9, 12.0], dtype=torch.float64)
    res = {}
    for mode in ("dense", "sparse"):
        D.inner.sparse = mode  # type: ignore[assignment]
        xx = x.clone().requires_grad_()
        pos = cond.pos.clone().requires_grad_()
        attr = cond.attr.clone().requires_grad_()  # type: ignore[union-attr]
        out = D(xx, sigma, Conditions(pos, attr, cond.valid))
        loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()
        params = [p for p in D.parameters()]
        grads = torch.autograd.grad(loss, [xx, pos, attr, *params], allow_unused=True)
        res[mode] = (out.detach(), grads)
    (o_d, g_d), (o_s, g_s) = res["dense"], res["sparse"]
    assert torch.allclose(o_d, o_s, rtol=0, atol=1e-12)
    for a, b in zip(g_d, g_s):
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            assert torch.allclose(a, b, rtol=0, atol=1e-11)
    assert g_d[1] is not None and bool((g_d[1] != 0).any())  # positions matter (relative features)
    counts = neighbor_list(D.inner.masks(cond, (H, H), sigma), cond.valid).valid.sum(-1)
    assert int(counts.min()) == 0 and int(counts.max()) >= 2  # both the null path and real mixing were exercised


def test_sparse_path_with_every_slot_padding_is_the_unconditional_path() -> None:
    torch.manual_seed(4)
    D = small(sparse="sparse", depth=1)
    cond = Conditions(torch.full((2, 5, 2), 3.0, dtype=torch.float64), torch.randn(2, 5, 3, dtype=torch.float64),
                      torch.zeros(2, 5, dtype=torch.bool))
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    assert torch.allclose(D(x, 0.5, cond), D(x, 0.5, None), rtol=0, atol=1e-13)


def _explicit_attention(attn: MaskedCrossAttention, ff: FourierFeatures, feats: torch.Tensor, tokens: torch.Tensor,
                        pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The class docstring's formulas, pixel by pixel with explicit offsets phi(p_k - x_q) (one image)."""
    _, C, h, w = feats.shape
    nh, d = attn.heads, attn.head_dim
    out = torch.empty(C, h, w, dtype=feats.dtype)
    for i in range(h):
        for j in range(w):
            hq = feats[0, :, i, j]
            q = attn.to_q(hq).view(nh, d)
            g = attn.to_g(hq)  # type: ignore[misc]
            ks = [k for k in range(tokens.shape[1]) if mask[0, k, i, j] > 0]
            logits = [(q * attn.null_k).sum(-1) / math.sqrt(d)]
            values = [attn.null_v]
            rels = [torch.zeros(ff.dim, dtype=feats.dtype)]
            for k in ks:
                rel = ff(pos[0, k] - torch.tensor([i, j], dtype=feats.dtype))
                kk = attn.to_k(tokens[0, k]).view(nh, d)
                logits.append(((q * kk).sum(-1) + g @ rel) / math.sqrt(d) + torch.log(mask[0, k, i, j]))
                values.append(attn.to_v(tokens[0, k]).view(nh, d))
                rels.append(rel)
            a = torch.softmax(torch.stack(logits, -1), -1)  # [nh, 1 + c]
            o = torch.einsum("hj,jhd->hd", a, torch.stack(values))
            u = a.mean(0) @ torch.stack(rels)
            out[:, i, j] = attn.to_out(torch.cat([o.reshape(-1), u]))
    return out[None]


@pytest.mark.parametrize("soft", [False, True])
def test_both_attention_paths_match_the_explicit_formula(soft: bool) -> None:
    torch.manual_seed(9)
    ff = FourierFeatures(2, max_wavelength=8.0)
    attn = MaskedCrossAttention(6, 5, heads=2, relative=ff).double()
    cond = Conditions.from_lists([[(0.5, 1.0), (4.0, 3.5), (2.0, 2.0), (2.5, 1.0)]]).to(dtype=torch.float64)
    mask = gaussian_masks(cond, (5, 5), 1.0, truncate=2.0) if soft else disc_masks(cond, (5, 5), 1.6)
    tokens = torch.randn(1, 4, 5, dtype=torch.float64)
    feats = torch.randn(1, 6, 5, 5, dtype=torch.float64)
    expected = _explicit_attention(attn, ff, feats, tokens, cond.pos, mask.to(torch.float64))
    dense = attn(feats, CondContext(tokens, cond.pos, cond.valid, (5, 5), mask))
    sparse = attn(feats, CondContext(tokens, cond.pos, cond.valid, (5, 5), mask, None, neighbor_list(mask, cond.valid)))
    assert torch.allclose(dense, expected, rtol=0, atol=1e-12)
    assert torch.allclose(sparse, expected, rtol=0, atol=1e-12)


def test_both_render_paths_match_the_explicit_formula() -> None:
    torch.manual_seed(10)
    ff = FourierFeatures(2)
    layer = RenderedConditioning(4, 5, relative=ff).double()
    pos = torch.tensor([[[1.0, 1.0], [3.0, 0.0], [2.0, 2.5]]], dtype=torch.float64)
    valid = torch.tensor([[True, False, True]])
    tokens = torch.randn(1, 3, 5, dtype=torch.float64)
    mask = gaussian_masks(Conditions(pos, None, valid), (4, 4), 1.0, truncate=1.5)
    outs = [layer(torch.zeros(1, 4, 4, 4, dtype=torch.float64), CondContext(tokens, pos, valid, (4, 4), mask, None, nb))
            for nb in (None, neighbor_list(mask, valid))]
    for i in range(4):
        for j in range(4):
            x = torch.tensor([i, j], dtype=torch.float64)
            m = [float(mask[0, k, i, j]) * bool(valid[0, k]) for k in range(3)]
            r = sum(m[k] * layer.to_t(tokens[0, k]) for k in range(3))
            u = sum(m[k] * ff(pos[0, k] - x) for k in range(3))
            expected = layer.to_out(torch.cat([r, u, torch.tensor([sum(m)], dtype=torch.float64)]))  # type: ignore[list-item]
            for out in outs:
                assert torch.allclose(out[0, :, i, j], expected, rtol=0, atol=1e-12)


# ------------------------------------------------------------------ exact locality through the sparse path


@pytest.mark.filterwarnings(NO_BATCH_RULE)
@pytest.mark.parametrize("kw", [{"depth": 1}, {"depth": 1, "conditioning": "render"},
                                {"depth": 1, "cond_rule": "gaussian", "cond_radius": 1.0, "gaussian_truncate": 2.0}])
def test_conditioner_dependence_through_the_sparse_path_is_exactly_local_and_tight(kw: dict) -> None:
    kw = {"cond_radius": 2.0, **kw}
    torch.manual_seed(2)
    D = small(sparse="sparse", **kw)
    r = D.conditioner_radius
    assert isinstance(r, int)
    H = W = 2 * r + 3
    x = torch.randn(1, 3, H, W, dtype=torch.float64)
    c = H // 2
    cond = Conditions(torch.tensor([[[float(c), float(c)], [1.0, float(W - 2)], [2.0, 2.0]]], dtype=torch.float64),
                      torch.randn(1, 3, 3, dtype=torch.float64))
    Jc = jacobian_cond(D, x, 0.7, cond)
    dist = cheb_to_points(H, W, cond.pos[0])
    assert torch.all(Jc[dist > r] == 0), "dependence on a conditioner outside the conditioner radius"
    assert dist[..., 0][Jc[..., 0] > 0].max().item() == r, "conditioner radius has slack"
    D.inner.sparse = "dense"
    assert torch.allclose(Jc, jacobian_cond(D, x, 0.7, cond), rtol=0, atol=1e-11)


# ------------------------------------------------------------------ the automatic choice


def _disc(K: int, H: int, radius: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    cond = random_scene(2, K, H, H, seed, p_valid=1.0)
    return disc_masks(cond, (H, H), radius), cond.valid


def test_auto_rule() -> None:
    m, v = _disc(64, 32, 3.5)
    M = neighbor_list(m, v).max_neighbors
    assert M <= 32  # a handful per pixel
    assert choose_sparse(m, v) and choose_sparse(m, v, conditioning="attention")
    assert not choose_sparse(m, v, conditioning="render")  # its single dense product is cheaper on CPU
    assert not choose_sparse(m, v, "dense") and choose_sparse(m[:, :4], v[:, :4], "sparse")
    small_k, vs = _disc(8, 32, 3.5)
    assert not choose_sparse(small_k, vs)  # below K_min the dense products win
    big, vb = _disc(64, 16, 12.0)  # masks covering most of the image: M close to K
    assert not choose_sparse(big, vb)
    assert not choose_sparse(None, v) and not choose_sparse(m[:, :0], v[:, :0], "sparse")
    with pytest.raises(LocalScoreError, match="conditioning"):
        choose_sparse(m, v, conditioning="unet")


def test_auto_takes_the_dense_path_under_forward_mode_and_vmap() -> None:
    m, v = _disc(64, 16, 2.0)
    assert choose_sparse(m, v)
    seen = []

    def f(p: torch.Tensor) -> torch.Tensor:
        seen.append(choose_sparse(m, v, tensors=(p,)))
        return p * 2

    p = torch.zeros(3)
    torch.func.jvp(f, (p,), (torch.ones(3),))
    torch.func.vmap(f)(torch.zeros(2, 3))
    with torch.autograd.forward_ad.dual_level():
        seen.append(choose_sparse(m, v))
    assert seen == [False, False, False]


def test_auto_takes_the_dense_path_when_parameters_are_transformed(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.func over the parameters (functional_call): the inputs are plain, the weights are wrapped."""
    import localscore.nn.attention as attention_mod

    torch.manual_seed(12)
    D = small(depth=1, cond_radius=1.0)
    x = torch.randn(1, 3, 12, 12, dtype=torch.float64)
    cond = random_scene(1, 40, 12, 12, 3)
    params = {k: v.detach() for k, v in D.named_parameters()}
    name = "inner.blocks.0.cond.to_v.weight"

    def f(w: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(D, {**params, name: w}, (x, 0.5, cond))

    built = []
    real = attention_mod._build_neighbor_list
    monkeypatch.setattr(attention_mod, "_build_neighbor_list", lambda m, *a: built.append(1) or real(m, *a))
    tangent = torch.randn_like(params[name])
    _, jvp = torch.func.jvp(f, (params[name],), (tangent,))  # the sparse path would raise (embedding_bag)
    torch.func.vmap(f)(torch.stack([params[name], 2 * params[name]]))  # an ensemble over one weight
    assert built == []
    eps = 1e-6
    fd = (f(params[name] + eps * tangent) - f(params[name] - eps * tangent)) / (2 * eps)
    assert torch.allclose(jvp, fd, atol=1e-6) and bool((jvp != 0).any())


def test_the_network_builds_the_list_only_when_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    import localscore.nn.attention as attention_mod

    calls = []
    real = attention_mod._build_neighbor_list
    monkeypatch.setattr(attention_mod, "_build_neighbor_list", lambda m, *a: calls.append(m.shape) or real(m, *a))
    D = small(depth=1, cond_radius=1.0)
    x = torch.randn(1, 3, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        D(x, 1.0, random_scene(1, 4, 12, 12, 0))  # K < 16: dense
        assert calls == []
        D(x, 1.0, random_scene(1, 40, 12, 12, 0))  # K = 40, radius 1: a few per pixel -> sparse
        assert calls == [(1, 40, 12, 12)]
        D.inner.sparse = "dense"
        D(x, 1.0, random_scene(1, 40, 12, 12, 0))
        assert len(calls) == 1


def test_enforce_locality_on_the_local_net_takes_the_dense_path_and_agrees() -> None:
    """A layer with a locality rule reads its own (restricted) mask, never the shared list."""
    torch.manual_seed(6)
    D = small(sparse="sparse", depth=1, cond_radius=3.0)
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    cond = random_scene(2, 20, 10, 10, 1)
    masked = enforce_locality(D, DiscRule(1.0))
    ref = small(sparse="dense", depth=1, cond_radius=3.0)
    ref.load_state_dict(D.state_dict())
    ref_masked = enforce_locality(ref, DiscRule(1.0))
    with torch.no_grad():
        a, b = masked(x, 0.5, cond), ref_masked(x, 0.5, cond)
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
        assert not torch.allclose(a, D(x, 0.5, cond), atol=1e-6)  # the rule really restricted it


def test_a_neighbour_list_of_the_wrong_size_is_refused() -> None:
    attn = MaskedCrossAttention(4, 4, heads=1)
    cond = Conditions.from_lists([[(1.0, 1.0)]])
    m = disc_masks(cond, (4, 4), 1.0)
    nb = neighbor_list(m[..., :3, :3], cond.valid)
    with pytest.raises(LocalScoreError, match="neighbour list"):
        attn(torch.randn(1, 4, 4, 4), CondContext(torch.randn(1, 1, 4), cond.pos, cond.valid, (4, 4), m, None, nb))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sparse_and_dense_agree_on_cuda() -> None:
    torch.manual_seed(11)
    D = small(depth=1).cuda()
    cond = random_scene(2, 40, 12, 12, 2)
    cond = Conditions(cond.pos.cuda(), cond.attr.cuda(), cond.valid.cuda())  # type: ignore[union-attr]
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64, device="cuda")
    outs = []
    for mode in ("dense", "sparse"):
        D.inner.sparse = mode  # type: ignore[assignment]
        outs.append(D(x, 0.5, cond))
    assert torch.allclose(outs[0], outs[1], rtol=0, atol=1e-12)


# ------------------------------------------------------------------ the per-forward mask construction


@given(seed=st.integers(0, 10_000), radius=st.one_of(st.integers(0, 9).map(float), st.floats(0.0, 9.0)),
       decimals=st.integers(0, 2), double=st.booleans())
def test_disc_masks_are_exactly_the_euclidean_definition(seed: int, radius: float, decimals: int, double: bool) -> None:
    """``disc_masks`` compares squared distances with an ulp-exact threshold: the same bits as
    ``sqrt((i - r)**2 + (j - c)**2) <= radius``, boundary pixels included (positions on a coarse grid)."""
    from localscore.masks import distances

    dtype = torch.float64 if double else torch.float32
    g = torch.Generator().manual_seed(seed)
    pos = (torch.rand(2, 12, 2, generator=g, dtype=dtype) * 15).round(decimals=decimals)
    cond = Conditions(pos, None, torch.rand(2, 12, generator=g) < 0.8)
    reference = distances(cond, (15, 13)) <= torch.tensor(radius, dtype=dtype)
    assert torch.equal(disc_masks(cond, (15, 13), radius), reference)


def test_distances_are_the_textbook_formula_with_finite_gradients() -> None:
    from localscore.masks import distances

    pos = torch.tensor([[[1.0, 2.0], [0.5, 0.25]]], dtype=torch.float64, requires_grad=True)
    cond = Conditions(pos, None, torch.tensor([[True, False]]))
    d = distances(cond, (3, 4))
    i, j = torch.meshgrid(torch.arange(3.0, dtype=torch.float64), torch.arange(4.0, dtype=torch.float64),
                          indexing="ij")
    assert torch.allclose(d[0, 0], torch.sqrt((i - 1.0) ** 2 + (j - 2.0) ** 2), rtol=0, atol=1e-15)
    assert bool(torch.isinf(d[0, 1]).all())
    (grad,) = torch.autograd.grad(d[0, 0].sum(), pos)
    assert bool(torch.isfinite(grad).all())  # the pixel at distance 0 contributes 0, not NaN
    cheb = distances(cond, (3, 4), "chebyshev")
    assert torch.equal(cheb[0, 0], torch.maximum((i - 1.0).abs(), (j - 2.0).abs()))
