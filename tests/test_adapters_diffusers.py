"""localscore.adapters.diffusers against diffusers itself (tiny random models, no downloads).

Oracles: the raw UNet output combined by hand with diffusers' own formulas, diffusers' DDIM scheduler,
a hand-written attention, and dense Jacobians (torch.func.jacrev).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

diffusers = pytest.importorskip("diffusers")

from _diffusers_models import D_EMB, T_TOK, tiny_unet  # noqa: E402

from localscore import LocalScoreError, bind  # noqa: E402
from localscore.adapters.diffusers import (  # noqa: E402
    DiffusersDenoiser,
    FeatureMap,
    FeatureRecorder,
    PromptConditions,
    RegionalAttnProcessor,
    concept_composition,
    concept_feature_means,
    concept_locality,
    concept_orthogonality,
    install_regional_attention,
    list_blocks,
    regional_attention,
    sample_with_scheduler,
    scheduler_sigmas,
    ve_to_vp,
    vp_to_ve,
)
from localscore.metrics import ablation_influence, gradient_influence  # noqa: E402
from localscore.nn import pool_mask  # noqa: E402

F64 = torch.float64


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    return tiny_unet()


def prompt(batch: int = 1, seed: int = 1, **kw) -> PromptConditions:
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(batch, T_TOK, D_EMB, generator=g, dtype=F64)
    null = torch.randn(1, T_TOK, D_EMB, generator=g, dtype=F64)
    return PromptConditions(e, [[1, 2], [3]], null_embeds=null, **kw)


def halves(batch: int = 1, size: int = 8) -> torch.Tensor:
    r = torch.zeros(batch, 2, size, size, dtype=torch.bool)
    r[:, 0, :, : size // 2] = True
    r[:, 1, :, size // 2:] = True
    return r


def sigma_of(ac: torch.Tensor, t: int) -> float:
    a = float(ac[t])
    return math.sqrt((1 - a) / a)


# ------------------------------------------------------------------------------------------------ prompts
def test_prompt_slot_semantics_mirror_conditions():
    p = prompt()
    assert p.num_groups == 2 and p.counts().tolist() == [1 * 2]
    e, null = p.embeds, p.null_embeds
    d0 = p.ablate(0).effective_embeds()
    assert torch.equal(d0[0, 1:3], null[0, 1:3]) and torch.equal(d0[0, [0, 3, 4]], e[0, [0, 3, 4]])
    none = p.drop_all().effective_embeds()
    assert torch.equal(none[0, 1:4], null[0, 1:4]) and torch.equal(none[0, [0, 4]], e[0, [0, 4]])
    s = p.singletons()
    assert [q.active.tolist() for q in s] == [[[True, False]], [[False, True]]]
    s1 = s[1].effective_embeds()
    assert torch.equal(s1[0, 3], e[0, 3]) and torch.equal(s1[0, 1], null[0, 1])
    assert p.drop_all().is_empty and not p.is_empty
    # selecting an absent concept keeps it absent
    assert p.ablate(0).select(0).is_empty
    # tiling and moving keep semantics
    r = p.ablate(1).repeat(3)
    assert r.batch_size == 3 and r.active.tolist() == [[True, False]] * 3
    assert torch.equal(r.effective_embeds()[2], p.ablate(1).effective_embeds()[0])
    assert p.to(dtype=torch.float32).embeds.dtype == torch.float32
    with pytest.raises(AttributeError):
        p.embeds = e  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(embeds=torch.zeros(5, 8), groups=[[1]]), "embeds"),
        (dict(embeds=torch.zeros(1, 5, 8), groups=[[7]]), "token index 7"),
        (dict(embeds=torch.zeros(1, 5, 8), groups=[[1, 2], [2]]), "disjoint"),
        (dict(embeds=torch.zeros(1, 5, 8), groups=[[]]), "no token"),
        (dict(embeds=torch.zeros(1, 5, 8), groups="1 2"), "token-index lists"),
        (dict(embeds=torch.zeros(1, 5, 8), groups=torch.zeros(2, 5)), "torch.bool"),
        (dict(embeds=torch.zeros(1, 5, 8), groups=[[1]], null_embeds=torch.zeros(1, 4, 8)), "null_embeds"),
        (dict(embeds=torch.zeros(1, 5, 8), groups=[[1]], regions=torch.zeros(1, 2, 4, 4)), "regions"),
        (dict(embeds=torch.zeros(1, 5, 8), groups=[[1]], regions=torch.full((1, 1, 4, 4), 2.0)), r"\[0, 1\]"),
        (dict(embeds=torch.zeros(1, 5, 8), groups=[[1]], added_cond_kwargs={"time_ids": torch.zeros(2, 6)}),
         "time_ids"),
        (dict(embeds=torch.zeros(1, 5, 8, dtype=torch.long), groups=[[1]]), "floating"),
    ],
)
def test_prompt_bad_input(kwargs, match):
    embeds, groups = kwargs.pop("embeds"), kwargs.pop("groups")
    with pytest.raises(LocalScoreError, match=match):
        PromptConditions(embeds, groups, **kwargs)


def test_prompt_bad_group_index_and_batch():
    p = prompt()
    with pytest.raises(LocalScoreError, match="out of range"):
        p.ablate(2)
    with pytest.raises(LocalScoreError, match="divisor"):
        prompt(batch=2).for_batch(3, "t")


# ------------------------------------------------------------------------------------------------ the denoiser
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_denoiser_matches_hand_computation(unet, prediction):
    sched = diffusers.DDIMScheduler(prediction_type=prediction)
    ac = sched.alphas_cumprod.to(F64)
    D = DiffusersDenoiser(unet, sched, quantize=True)
    p = prompt(batch=2).ablate(1)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3), dtype=F64)
    ts = [37, 611]
    sig = torch.tensor([sigma_of(ac, t) for t in ts], dtype=F64)
    out = D(x, sig, p)
    # by hand, in diffusers' variance-preserving variables
    a = ac[ts].view(-1, 1, 1, 1)
    x_vp = x * a.sqrt()                                  # = x / sqrt(1 + sigma^2)
    e_eff = p.embeds.clone()
    e_eff[:, 3] = p.null_embeds[0, 3]                    # concept 1 (token 3) absent
    raw = unet(x_vp, torch.tensor(ts, dtype=F64), encoder_hidden_states=e_eff).sample
    if prediction == "epsilon":
        x0 = (x_vp - (1 - a).sqrt() * raw) / a.sqrt()
    else:
        x0 = a.sqrt() * x_vp - (1 - a).sqrt() * raw
    torch.testing.assert_close(out, x0, rtol=1e-10, atol=1e-10)


def test_denoiser_fractional_timesteps_and_null_prompt(unet):
    sched = diffusers.DDIMScheduler()
    D = DiffusersDenoiser(unet, sched, null_prompt=prompt().drop_all())
    ac = sched.alphas_cumprod.to(F64)
    s = sigma_of(ac, 400)
    x = torch.randn(1, 4, 8, 8, dtype=F64)
    raw = unet(x / math.sqrt(1 + s * s), torch.tensor([400.0], dtype=F64),
               encoder_hidden_states=prompt().drop_all().effective_embeds()).sample
    # no prompt: the null prompt; the float32 log-sigma table gives t = 400 up to ~1e-4
    torch.testing.assert_close(D(x, s), x - s * raw, rtol=1e-4, atol=1e-4)
    with pytest.raises(LocalScoreError, match="null_prompt"):
        DiffusersDenoiser(unet, sched)(x, s)
    with pytest.raises(LocalScoreError, match="outside the model's range"):
        D(x, 1e4)
    with pytest.raises(LocalScoreError, match="PromptConditions"):
        D(x, s, torch.zeros(1, 5, 8))


def test_denoiser_sdxl_added_conditions():
    unet = tiny_unet(addition_embed_type="text_time", addition_time_embed_dim=4,
                     projection_class_embeddings_input_dim=6 + 6 * 4)
    sched = diffusers.DDIMScheduler()
    ac = sched.alphas_cumprod.to(F64)
    add = {"text_embeds": torch.randn(1, 6, dtype=F64), "time_ids": torch.tensor([[8.0, 8, 0, 0, 8, 8]], dtype=F64)}
    p = prompt(added_cond_kwargs=add)
    D = DiffusersDenoiser(unet, sched, quantize=True)
    x = torch.randn(1, 4, 8, 8, dtype=F64)
    s = sigma_of(ac, 250)
    raw = unet(x / math.sqrt(1 + s * s), torch.tensor([250.0], dtype=F64), encoder_hidden_states=p.embeds,
               added_cond_kwargs=add).sample
    torch.testing.assert_close(D(x, s, p), x - s * raw, rtol=1e-10, atol=1e-10)
    other = p.replace(added_cond_kwargs={**add, "text_embeds": add["text_embeds"] + 1})
    assert (D(x, s, other) - D(x, s, p)).abs().max() > 1e-6   # really passed to the model


def test_from_config_dict_and_zero_snr(unet):
    cfg = dict(diffusers.DDIMScheduler(prediction_type="v_prediction").config)
    D = DiffusersDenoiser(unet, cfg)
    assert D.prediction == "v_prediction"
    ac = diffusers.DDIMScheduler().alphas_cumprod.double()
    torch.testing.assert_close(D.sigmas.double(), ((1 - ac) / ac).sqrt(), rtol=1e-6, atol=0)
    with pytest.raises(LocalScoreError, match="reaches 0"):
        DiffusersDenoiser(unet, diffusers.DDIMScheduler(rescale_betas_zero_snr=True))
    with pytest.raises(LocalScoreError, match="scheduler"):
        DiffusersDenoiser(unet, "ddim")


def test_vp_ve_roundtrip():
    x = torch.randn(2, 4, 3, 3, dtype=F64)
    s = torch.tensor([0.5, 3.0], dtype=F64)
    torch.testing.assert_close(vp_to_ve(x, s), x * (1 + s.view(-1, 1, 1, 1) ** 2).sqrt())
    torch.testing.assert_close(ve_to_vp(vp_to_ve(x, s), s), x)


# ------------------------------------------------------------------------------------------------ sampling
def diffusers_ddim(unet, sched, latents, embeds, n):
    sched.set_timesteps(n)
    for t in sched.timesteps:
        eps = unet(latents, t, encoder_hidden_states=embeds).sample
        latents = sched.step(eps, t, latents).prev_sample
    return latents


def test_ddim_localscore_sampler_matches_diffusers_scheduler(unet):
    from localscore.sampling import sample_ddim, sample_euler

    sched = diffusers.DDIMScheduler(clip_sample=False)
    p = prompt()
    n = 8
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5), dtype=F64)
    ref = diffusers_ddim(unet, sched, latents, p.embeds.expand(2, -1, -1), n)
    sigmas = scheduler_sigmas(sched, n, dtype=F64)
    assert sigmas[-1] == 0 and len(sigmas) == n + 1
    D = DiffusersDenoiser(unet, sched, quantize=True)
    x0 = vp_to_ve(latents, sigmas[0])
    from localscore.adapters.diffusers import scheduler_start

    torch.testing.assert_close(scheduler_start(diffusers.DDIMScheduler(clip_sample=False), latents, n)[0], x0)
    ours = sample_ddim(bind(D, p), x0, sigmas)
    # diffusers computes the scheduler's coefficients (sqrt of alphas_cumprod) in float32: 1e-5 is its round-off
    tol = dict(rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(ours, ref, **tol)
    # DDIM with eta = 0 is Euler in these variables
    torch.testing.assert_close(sample_euler(bind(D, p), x0, sigmas), ref, **tol)
    assert (ours - latents).abs().max() > 0.1                 # the samplers really moved
    # and the scheduler bridge driving the wrapped denoiser reproduces the raw loop
    bridged = sample_with_scheduler(D, diffusers.DDIMScheduler(clip_sample=False), latents, p, num_inference_steps=n)
    torch.testing.assert_close(bridged, ref, **tol)


def test_scheduler_bridge_v_prediction_and_final_alpha(unet):
    sched = diffusers.DDIMScheduler(clip_sample=False, prediction_type="v_prediction", set_alpha_to_one=False)
    p = prompt()
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6), dtype=F64)
    sched.set_timesteps(5)
    ref = latents
    for t in sched.timesteps:
        v = unet(ref, t, encoder_hidden_states=p.embeds).sample
        ref = sched.step(v, t, ref).prev_sample
    D = DiffusersDenoiser(unet, sched, quantize=True)
    out = sample_with_scheduler(D, diffusers.DDIMScheduler(clip_sample=False, prediction_type="v_prediction",
                                                           set_alpha_to_one=False), latents, p,
                                num_inference_steps=5)
    torch.testing.assert_close(out, ref, rtol=2e-5, atol=2e-5)
    sig = scheduler_sigmas(sched, 5, dtype=F64)
    assert sig[-1] == pytest.approx(sigma_of(sched.alphas_cumprod.to(F64), 0))


# ------------------------------------------------------------------------------------------------ regional attention
def hand_attention(attn, hs, ctx, weight):
    """softmax(q k^T / sqrt(d)) reweighted by ``weight [B, Q, T]`` and renormalised, per head, then to_out."""
    B, Q, _ = hs.shape
    h = attn.heads
    q = attn.to_q(hs).view(B, Q, h, -1).transpose(1, 2)
    k = attn.to_k(ctx).view(B, ctx.shape[1], h, -1).transpose(1, 2)
    v = attn.to_v(ctx).view(B, ctx.shape[1], h, -1).transpose(1, 2)
    p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1) * weight[:, None]
    p = p / p.sum(-1, keepdim=True)
    out = (p @ v).transpose(1, 2).reshape(B, Q, -1)
    return attn.to_out[1](attn.to_out[0](out))


@pytest.mark.parametrize("soft", [False, True])
def test_regional_processor_matches_hand_attention(soft):
    from diffusers.models.attention_processor import Attention

    from localscore.adapters.diffusers.regional import REGIONS_KWARG, _RegionSpec

    torch.manual_seed(0)
    attn = Attention(query_dim=6, cross_attention_dim=D_EMB, heads=2, dim_head=3).to(F64)
    hs = torch.randn(2, 16, 6, dtype=F64)                        # a 4x4 grid of queries
    p = prompt(batch=2)
    regions = halves(2, 4)
    if soft:
        regions = torch.rand(2, 2, 4, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    m = regions.to(F64).flatten(2)                               # [B, G, Q]
    weight = torch.ones(2, 16, T_TOK, dtype=F64)
    weight[:, :, 1] = weight[:, :, 2] = m[:, 0]
    weight[:, :, 3] = m[:, 1]
    ref = hand_attention(attn, hs, p.embeds, weight)
    with install_regional_attention(attn):
        out = attn(hs, p.embeds, **{REGIONS_KWARG: _RegionSpec(p.groups, regions, (4, 4))})
        plain = attn(hs, p.embeds)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(plain, hand_attention(attn, hs, p.embeds, torch.ones_like(weight)))


def test_regional_attention_zero_influence_outside_region_at_a_block(unet):
    """Dense Jacobian of the first transformer block's output w.r.t. each concept's embeddings."""
    D = DiffusersDenoiser(unet, diffusers.DDIMScheduler(), quantize=True)
    regions = halves()
    p = prompt().with_regions(regions)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4), dtype=F64)
    block = FeatureMap(D, unet, "down_blocks.0.attentions.0")
    with regional_attention(unet):
        J = torch.func.jacrev(lambda e: block(x, 2.0, p.replace(embeds=e)))(p.embeds)   # [1, 8, 8, 8, 1, T, D]
    J = J[0, :, :, :, 0]                                                   # [C', 8, 8, T, D]
    for g, toks in enumerate([[1, 2], [3]]):
        jg = J[..., toks, :].abs().amax(dim=(0, 3, 4))                      # [8, 8] per pixel
        inside = regions[0, g]
        assert float(jg[~inside].max()) == 0.0                             # exactly zero outside
        assert float(jg[inside].min()) > 1e-8                              # and present inside
    # without the intervention the same block sees every concept everywhere
    J0 = torch.func.jacrev(lambda e: block(x, 2.0, p.with_regions(None).replace(embeds=e)))(p.embeds)
    assert float(J0[0, :, :, :, 0][..., [3], :].abs().amax(dim=(0, 3, 4))[~regions[0, 1]].min()) > 1e-8
    # gradient_influence (exact) equals the squared Frobenius norm of the dense Jacobian
    with regional_attention(unet):
        gi = gradient_influence(block, x, 2.0, p)
    fro = torch.stack([J[..., t, :].pow(2).sum(dim=(0, 3, 4)) for t in ([1, 2], [3])])
    torch.testing.assert_close(gi[0], fro, rtol=1e-8, atol=1e-12)


def test_regional_attention_at_the_output(unet):
    """At the UNet output: a concept whose region is empty has exactly zero influence anywhere (every
    attention layer, at every resolution, is masked); with its region, it has influence."""
    D = DiffusersDenoiser(unet, diffusers.DDIMScheduler(), quantize=True)
    regions = halves()
    regions[:, 1] = False                                 # concept 1 may act nowhere
    p = prompt().with_regions(regions)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7), dtype=F64)
    with regional_attention(unet):
        J = torch.func.jacrev(lambda e: D(x, 1.5, p.replace(embeds=e)))(p.embeds)[0, :, :, :, 0]
        abl = ablation_influence(D, x, 1.5, p, max_batch=1)   # one call per set: no batch-size round-off
    assert float(J[..., 3, :].abs().max()) == 0.0
    assert float(J[..., [1, 2], :].abs().max()) > 1e-6
    assert float(abl[0, 1].max()) == 0.0 and float(abl[0, 0].max()) > 1e-6


def test_regional_attention_removal_is_bit_exact(unet):
    D = DiffusersDenoiser(unet, diffusers.DDIMScheduler())
    p = prompt()
    x = torch.randn(2, 4, 8, 8, dtype=F64)
    before_procs = dict(unet.attn_processors)
    ref = D(x, 1.0, p)
    handle = install_regional_attention(unet)
    assert all(isinstance(q, RegionalAttnProcessor) for q in unet.attn_processors.values())
    assert torch.equal(D(x, 1.0, p), ref)                 # pass-through without regions
    changed = D(x, 1.0, p.with_regions(halves()))
    assert not torch.equal(changed, ref)
    with pytest.raises(LocalScoreError, match="already installed"):
        install_regional_attention(unet)
    handle.remove()
    handle.remove()                                       # idempotent
    after = dict(unet.attn_processors)
    assert after.keys() == before_procs.keys() and all(after[k] is before_procs[k] for k in after)
    assert torch.equal(D(x, 1.0, p), ref)
    with pytest.raises(LocalScoreError, match="no regional attention"):
        D(x, 1.0, p.with_regions(halves()))


def test_regional_attention_composes_with_other_processors():
    from diffusers.models.attention_processor import Attention, AttnProcessor

    class Scaled:
        """A user processor taking its own keyword, around diffusers' classic processor."""

        def __init__(self):
            self.inner = AttnProcessor()

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, gain=1.0):
            return gain * self.inner(attn, hidden_states, encoder_hidden_states, attention_mask)

    from localscore.adapters.diffusers.regional import REGIONS_KWARG, _RegionSpec

    torch.manual_seed(1)
    attn = Attention(query_dim=6, cross_attention_dim=D_EMB, heads=2, dim_head=3).to(F64)
    hs = torch.randn(1, 16, 6, dtype=F64)
    p = prompt()
    spec = _RegionSpec(p.groups, halves(1, 4), (4, 4))
    with install_regional_attention(attn):
        ref = attn(hs, p.embeds, **{REGIONS_KWARG: spec})   # around AttnProcessor2_0
    attn.set_processor(Scaled())
    with install_regional_attention(attn):
        out = attn(hs, p.embeds, gain=2.0, **{REGIONS_KWARG: spec})
    torch.testing.assert_close(out, 2.0 * ref, rtol=1e-10, atol=1e-12)


def test_regional_attention_errors(unet):
    with pytest.raises(LocalScoreError, match="no diffusers attention layer"):
        install_regional_attention(torch.nn.Linear(2, 2))
    D = DiffusersDenoiser(unet, diffusers.DDIMScheduler())
    e = torch.randn(1, 2, D_EMB, dtype=F64)
    left = halves()
    left[:, 1] = left[:, 0]                                          # both groups on the left half
    blind = PromptConditions(e, [[0], [1]], regions=left)            # every token grouped: the right sees none
    x = torch.randn(1, 4, 8, 8, dtype=F64)
    with regional_attention(unet), pytest.raises(LocalScoreError, match="may attend to no token"):
        D(x, 1.0, blind)
    with regional_attention(unet), pytest.raises(LocalScoreError, match="latent resolution"):
        D(x, 1.0, prompt().with_regions(halves(1, 4)))
    with pytest.raises(LocalScoreError, match="coarse"):
        pool_mask(halves(), size=(4, 4), coarse="some")  # type: ignore[arg-type]


@pytest.mark.parametrize("by", ["size", "stride"])
def test_pool_mask_rules(by):
    """The region resizing of the attention processors is localscore.nn.pool_mask (ex resize_regions)."""
    m = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    m[..., 0, 0] = True                                   # a quarter of the top-left coarse cell
    m[..., 2:, 2:] = True                                 # all of the bottom-right one
    m[..., 0:2, 2] = True                                 # half of the top-right one
    kw: dict = {"size": (2, 2)} if by == "size" else {"stride": 2}
    assert pool_mask(m, coarse="any", **kw)[0, 0].tolist() == [[True, True], [False, True]]
    assert pool_mask(m, coarse="majority", **kw)[0, 0].tolist() == [[False, True], [False, True]]
    assert pool_mask(m, coarse="all", **kw)[0, 0].tolist() == [[False, False], [False, True]]
    soft = pool_mask(m.double(), coarse="mean", **kw)
    assert soft[0, 0].tolist() == [[0.25, 0.5], [0.0, 1.0]]
    assert pool_mask(m.double(), coarse="any", **kw)[0, 0].tolist() == [[1.0, 1.0], [0.0, 1.0]]
    # upsampling (regions at the latent size, maps in pixels) repeats cells
    assert torch.equal(pool_mask(m, size=(8, 8)), m.repeat_interleave(2, 2).repeat_interleave(2, 3))
    with pytest.raises(LocalScoreError, match="does not apply"):
        pool_mask(m, size=(2, 2), coarse="mean")
    with pytest.raises(LocalScoreError, match="does not apply"):
        pool_mask(m.double(), size=(2, 2), coarse="majority")
    with pytest.raises(LocalScoreError, match="exactly one"):
        pool_mask(m)
    with pytest.raises(LocalScoreError, match="not divisible"):
        pool_mask(m, 3)


# ------------------------------------------------------------------------------------------------ features
def test_feature_hooks_return_the_block_shapes(unet):
    names = [n for n, _ in list_blocks(unet, max_depth=1)]
    assert {"down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"} <= set(names)
    assert [n for n, _ in list_blocks(unet, types=["Transformer2DModel"])] == [
        "down_blocks.0.attentions.0", "up_blocks.1.attentions.0", "up_blocks.1.attentions.1",
        "mid_block.attentions.0"]
    D = DiffusersDenoiser(unet, diffusers.DDIMScheduler())
    x = torch.randn(3, 4, 8, 8, dtype=F64)
    want = {  # from the config: channels (8, 16), one downsampling by 2 after block 0
        "down_blocks.0": (3, 8, 4, 4), "down_blocks.1": (3, 16, 4, 4), "mid_block": (3, 16, 4, 4),
        "up_blocks.0": (3, 16, 8, 8), "up_blocks.1": (3, 8, 8, 8), "down_blocks.0.attentions.0": (3, 8, 8, 8),
        "mid_block.attentions.0": (3, 16, 4, 4), "down_blocks.0.attentions.0.transformer_blocks.0": (3, 64, 8),
    }
    with FeatureRecorder(unet, list(want)) as rec:
        D(x, 1.0, prompt())
    assert {k: tuple(v.shape) for k, v in rec.features.items()} == want
    assert rec.features["mid_block"].requires_grad              # kept in the graph
    # hooks are removed on exit
    assert all(not m._forward_hooks for m in unet.modules())
    assert tuple(FeatureMap(D, unet, "down_blocks.0.attentions.0.transformer_blocks.0")(x, 1.0, prompt()).shape) \
        == (3, 8, 8, 8)
    with pytest.raises(LocalScoreError, match="no block named"):
        FeatureRecorder(unet, ["down_blocks.7"])


def test_concept_feature_means_recover_known_cosines():
    """Features built with known mean shifts: style along u, content along v with cos(u, v) = 0.6."""
    u = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    v = torch.tensor([0.6, 0.8, 0.0], dtype=F64)
    w = torch.tensor([0.0, 0.0, 1.0], dtype=F64)

    def fn(x, s, p):                                   # [B, 3, 1, 1]: x + sum of present concepts' shifts
        act = (~p.absent_tokens()[:, 1:4]).to(F64)     # tokens 1, 2, 3 <-> concepts style, content, other
        shift = act[:, 0:1] * 2 * u + act[:, 1:2] * 3 * v + act[:, 2:3] * w
        return x + shift[:, :, None, None]

    e = torch.randn(1, T_TOK, D_EMB, dtype=F64)
    p = PromptConditions(e, [[1], [2], [3]])
    x = torch.randn(64, 3, 1, 1, generator=torch.Generator().manual_seed(0), dtype=F64)
    means, bg = concept_feature_means(fn, x, 1.0, p.singletons(), p.drop_all())
    torch.testing.assert_close(means - bg, torch.stack([2 * u, 3 * v, w]))
    res = concept_orthogonality(fn, x, 1.0, p.singletons(), p.drop_all(), labels=["style", "content", "other"])
    torch.testing.assert_close(res.cosine, torch.tensor([[1, 0.6, 0], [0.6, 1, 0], [0, 0, 1]], dtype=F64))
    assert res.max_abs_offdiag == pytest.approx(0.6) and res.labels == ("style", "content", "other")
    torch.testing.assert_close(res.norms, torch.tensor([2.0, 3.0, 1.0], dtype=F64))


# ------------------------------------------------------------------------------------------------ influence
def test_ablation_influence_modes_against_hand_differences(unet):
    D = DiffusersDenoiser(unet, diffusers.DDIMScheduler())
    p = prompt(batch=2)
    x = torch.randn(2, 4, 8, 8, dtype=F64)
    drop = ablation_influence(D, x, 1.0, p)
    only = ablation_influence(D, x, 1.0, p, mode="only")
    for g in range(2):   # squared channel norms of the differences, by hand
        torch.testing.assert_close(drop[:, g], (D(x, 1.0, p) - D(x, 1.0, p.ablate(g))).pow(2).sum(1))
        torch.testing.assert_close(only[:, g], (D(x, 1.0, p.select(g)) - D(x, 1.0, p.drop_all())).pow(2).sum(1))
    # one batched call per chunk of variants: max_batch = 2 B evaluates the reference with each variant
    torch.testing.assert_close(ablation_influence(D, x, 1.0, p, max_batch=4), drop)
    # an absent concept has no influence; a decoder maps the maps to its own resolution
    assert float(ablation_influence(D, x, 1.0, p.ablate(0))[:, 0].max()) == 0.0
    up = ablation_influence(D, x, 1.0, p, decoder=lambda z: torch.nn.functional.interpolate(z, scale_factor=2))
    torch.testing.assert_close(up, torch.nn.functional.interpolate(drop, scale_factor=2))
    with pytest.raises(LocalScoreError, match="mode"):
        ablation_influence(D, x, 1.0, p, mode="drop")  # type: ignore[arg-type]


def test_gradient_influence_exact_and_probes_on_a_known_jacobian():
    """fn(x, s, p)[b, c, i, j] = sum_{t, d} A[c, i, j, t, d] e[b, t, d]: the Jacobian is A itself."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(2, 3, 3, T_TOK, D_EMB, generator=g, dtype=F64)
    A[:, 0, 0, 1:3] = 0                                   # pixel (0, 0) does not see concept 0 (tokens 1, 2)

    def fn(x, s, p):
        return x[:, :1].expand(-1, 2, -1, -1) * 0 + torch.einsum("cijtd,btd->bcij", A, p.effective_embeds())

    p = prompt()
    x = torch.zeros(1, 1, 3, 3, dtype=F64)
    want = torch.stack([A[..., t, :].pow(2).sum(dim=(0, 3, 4)) for t in ([1, 2], [3])])   # ||A_g||_F^2
    exact = gradient_influence(fn, x, 1.0, p)
    torch.testing.assert_close(exact[0], want, rtol=1e-12, atol=1e-12)
    assert float(exact[0, 0, 0, 0]) == 0.0
    est = gradient_influence(fn, x, 1.0, p, probes=400, generator=torch.Generator().manual_seed(1))
    # E |A v|^2 = ||A||_F^2 for Rademacher v: 400 probes put the squared norms within ~15 % per pixel
    ratio = est[0, :, 1:, 1:] / want[:, 1:, 1:]
    assert float((ratio - 1).abs().max()) < 0.35 and float((ratio.mean() - 1).abs()) < 0.05
    with pytest.raises(LocalScoreError, match="probes"):
        gradient_influence(fn, x, 1.0, p, probes=0)


def test_gradient_influence_runs_without_graph(unet):
    D = DiffusersDenoiser(unet, diffusers.DDIMScheduler())
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(8), dtype=F64)
    p = prompt()
    with torch.no_grad():
        gi = gradient_influence(D, x, 1.0, p, probes=2, generator=torch.Generator().manual_seed(0))
    assert gi.shape == (1, 2, 8, 8) and not gi.requires_grad and float(gi.min()) >= 0 and float(gi.max()) > 0


def test_concept_locality_goes_through_the_metric():
    p = prompt(batch=2).ablate(1)                             # concept 1 absent in both prompts
    regions = halves(1, 4)
    I = torch.zeros(2, 2, 2, 2, dtype=F64)
    I[:, 0, :, 0] = 1.0                                     # concept 0: left column, its region
    I[1, 0, 0, 1] = 2.0                                     # image 1: some influence on the right
    res = concept_locality(I, p, regions=regions)           # regions at 4x4 resized to the maps' 2x2
    assert res.inside[:, 0].tolist() == [1.0, 0.5]
    assert res.on_others[:, 0].tolist() == [0.0, 0.0]      # the absent concept's region does not count
    assert not bool(res.valid[:, 1].any()) and res.index == pytest.approx(0.75)
    with pytest.raises(LocalScoreError, match="no regions"):
        concept_locality(I, p)
    with pytest.raises(LocalScoreError, match="influence"):
        concept_locality(I[:, :1], p, regions=regions)


def test_concept_composition_is_the_projective_formula(unet):
    from localscore.sampling import sample_euler

    D = DiffusersDenoiser(unet, diffusers.DDIMScheduler(clip_sample=False), quantize=True)
    p = prompt()
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(9), dtype=F64)
    comp = concept_composition(D, p, strategy="sequential")
    bg = D(x, 2.0, p.drop_all())
    want = bg + (D(x, 2.0, p.select(0)) - bg) + (D(x, 2.0, p.select(1)) - bg)
    torch.testing.assert_close(comp(x, 2.0), want, rtol=1e-10, atol=1e-10)
    weighted = concept_composition(D, p, [2.0, 0.0], strategy="sequential")
    torch.testing.assert_close(weighted(x, 2.0), bg + 2 * (D(x, 2.0, p.select(0)) - bg), rtol=1e-10, atol=1e-10)
    # the composition samples with localscore's samplers and with a diffusers scheduler, identically
    sched = diffusers.DDIMScheduler(clip_sample=False)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(10), dtype=F64)
    via_sched = sample_with_scheduler(comp, sched, latents, num_inference_steps=4)
    sig = scheduler_sigmas(sched, 4, dtype=F64)
    via_euler = sample_euler(comp, vp_to_ve(latents, sig[0]), sig)
    torch.testing.assert_close(via_sched, via_euler, rtol=2e-5, atol=2e-5)


# ------------------------------------------------------------------------------------------------ transformer denoiser
def tiny_pixart() -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=4, in_channels=4, out_channels=8, num_layers=1,
        cross_attention_dim=8, sample_size=8, patch_size=2, caption_channels=D_EMB, norm_num_groups=1,
    ).to(F64).eval()


def test_transformer_denoiser_hand_computation_and_output_locality():
    """A one-layer PixArt transformer: text enters only through the masked cross-attention and every later
    operation is per patch token, so with regional attention a concept's influence on the *output* is
    exactly zero outside its region."""
    model = tiny_pixart()
    sched = diffusers.DDIMScheduler()
    ac = sched.alphas_cumprod.to(F64)
    D = DiffusersDenoiser(model, sched, quantize=True)
    p = prompt()
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(11), dtype=F64)
    s = sigma_of(ac, 300)
    raw = model(hidden_states=x / math.sqrt(1 + s * s), encoder_hidden_states=p.embeds,
                timestep=torch.tensor([300.0], dtype=F64)).sample
    assert raw.shape[1] == 8                                # learned variance: the first 4 channels are epsilon
    torch.testing.assert_close(D(x, s, p), x - s * raw[:, :4], rtol=1e-10, atol=1e-10)
    regions = halves()
    pr = p.with_regions(regions)
    with regional_attention(model):
        J = torch.func.jacrev(lambda e: D(x, s, pr.replace(embeds=e)))(p.embeds)[0, :, :, :, 0]   # [4, 8, 8, T, D]
    for g, toks in enumerate([[1, 2], [3]]):
        jg = J[..., toks, :].abs().amax(dim=(0, 3, 4))
        assert float(jg[~regions[0, g]].max()) == 0.0
        assert float(jg[regions[0, g]].min()) > 1e-8
    J0 = torch.func.jacrev(lambda e: D(x, s, p.replace(embeds=e)))(p.embeds)[0, :, :, :, 0]
    assert float(J0[..., [3], :].abs().amax(dim=(0, 3, 4))[~regions[0, 1]].min()) > 1e-8


# ------------------------------------------------------------------------------------------------ properties
@st.composite
def grouped_prompts(draw):
    B = draw(st.integers(1, 3))
    T = draw(st.integers(2, 7))
    owner = draw(st.lists(st.integers(-1, 2), min_size=T, max_size=T))          # group of each token, -1 none
    G = max(owner) + 1
    if G == 0:
        owner[0], G = 0, 1
    groups = [[t for t in range(T) if owner[t] == g] for g in range(G)]
    groups = [g for g in groups if g]
    active = draw(st.lists(st.lists(st.booleans(), min_size=len(groups), max_size=len(groups)),
                           min_size=B, max_size=B))
    seed = draw(st.integers(0, 2**16))
    return B, T, groups, torch.tensor(active, dtype=torch.bool), seed


@given(grouped_prompts())
def test_effective_embeds_follow_the_rule(case):
    B, T, groups, active, seed = case
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(B, T, 3, generator=g, dtype=F64)
    null = torch.randn(1, T, 3, generator=g, dtype=F64)
    p = PromptConditions(e, groups, null_embeds=null, active=active)
    eff = p.effective_embeds()
    for b in range(B):
        for t in range(T):
            absent = any(t in grp and not bool(active[b, k]) for k, grp in enumerate(groups))
            assert torch.equal(eff[b, t], null[0, t] if absent else e[b, t])
    # drop_all then select(k) restores exactly concept k's tokens; singletons reassemble the prompt
    for k, grp in enumerate(groups):
        sel = p.select(k).effective_embeds()
        for b in range(B):
            keep = grp if bool(active[b, k]) else []
            for t in range(T):
                in_any = any(t in gg for gg in groups)
                want = e[b, t] if (t in keep or not in_any) else null[0, t]
                assert torch.equal(sel[b, t], want)
    assert torch.equal(p.drop_all().counts(), torch.zeros(B, dtype=torch.long))
    assert torch.equal(sum(s.counts() for s in p.singletons()), p.counts())


def test_reduced_precision_model_returns_the_input_dtype():
    unet16 = tiny_unet().to(torch.bfloat16)
    unet64 = tiny_unet()
    sched = diffusers.DDIMScheduler()
    p = prompt()
    x = torch.randn(1, 4, 8, 8)
    out16 = DiffusersDenoiser(unet16, sched)(x, 1.0, p.to(dtype=torch.float32))
    out64 = DiffusersDenoiser(unet64, sched)(x.double(), 1.0, p)
    assert out16.dtype == torch.float32
    torch.testing.assert_close(out16.double(), out64, rtol=0.05, atol=0.05)


def test_attention_mask_reaches_the_model(unet):
    D = DiffusersDenoiser(unet, diffusers.DDIMScheduler())
    mask = torch.ones(1, T_TOK)
    mask[0, 4] = 0                                           # token 4 is padding
    p = prompt(attention_mask=mask)
    e2 = p.embeds.clone()
    e2[0, 4] += 5.0
    x = torch.randn(1, 4, 8, 8, dtype=F64)
    torch.testing.assert_close(D(x, 1.0, p.replace(embeds=e2)), D(x, 1.0, p), rtol=0, atol=1e-12)
    assert (D(x, 1.0, p.replace(attention_mask=None, embeds=e2)) - D(x, 1.0, p)).abs().max() > 1e-6


def test_bad_input_of_the_public_functions(unet):
    D = DiffusersDenoiser(unet, diffusers.DDIMScheduler())
    p = prompt()
    x = torch.randn(1, 4, 8, 8, dtype=F64)
    cases = [
        (lambda: bind(D, "a red hat"), "conditioner set"),
        (lambda: bind(D, p)(x, 1.0, p), "already has its conditions"),
        (lambda: scheduler_sigmas(object(), 4), "scheduler"),
        (lambda: scheduler_sigmas(diffusers.DDIMScheduler(), 0), "num_inference_steps"),
        (lambda: sample_with_scheduler(D, diffusers.DDIMScheduler(), x[0], p, num_inference_steps=2), "latents"),
        (lambda: sample_with_scheduler("D", diffusers.DDIMScheduler(), x, p, num_inference_steps=2), "denoiser"),
        (lambda: list_blocks("unet"), "nn.Module"),
        (lambda: FeatureMap(D, unet, "nope"), "no block named"),
        (lambda: ablation_influence(D, x, 1.0, p.embeds), "conditioner set"),
        (lambda: ablation_influence(D, x, -1.0, p), "sigma"),
        (lambda: gradient_influence(D, x, 1.0, p, chunk=0), "chunk"),
        (lambda: concept_feature_means(D, x, 1.0, p, p.drop_all()), "list of PromptConditions"),
        (lambda: concept_locality(torch.zeros(1, 2, 4), p, regions=halves()), "influence"),
        (lambda: pool_mask(torch.zeros(2, 2), size=(1, 1)), "mask"),
        (lambda: p.replace(colour=1), "unknown fields"),
        (lambda: p.repeat(0), "n"),
        (lambda: DiffusersDenoiser(torch.nn.Linear(2, 2), diffusers.DDIMScheduler()), "convention"),
        (lambda: install_regional_attention(unet, coarse="most"), "coarse"),
        (lambda: RegionalAttnProcessor(3), "attention processor"),
    ]
    from localscore.adapters.diffusers import vae_decoder

    cases.append((lambda: vae_decoder(object()), "decode"))
    for call, match in cases:
        with pytest.raises(LocalScoreError, match=match):
            call()


def test_vae_decoder_matches_diffusers_decode():
    from localscore.adapters.diffusers import vae_decoder

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                                  down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                                  up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=4,
                                  scaling_factor=0.13025).to(F64).eval()
    z = torch.randn(2, 4, 4, 4, dtype=F64)
    with torch.no_grad():
        want = vae.decode(z / 0.13025).sample
        got = vae_decoder(vae)(z)
    assert got.shape == (2, 3, 8, 8)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def pipeline_loop(unet, sched, latents, embeds, n):
    """The loop of a diffusers pipeline (no guidance): scale, predict, step."""
    sched.set_timesteps(n)
    latents = latents * sched.init_noise_sigma
    for t in sched.timesteps:
        out = unet(sched.scale_model_input(latents, t), t, encoder_hidden_states=embeds).sample
        latents = sched.step(out, t, latents).prev_sample
    return latents


@pytest.mark.parametrize("make", [
    lambda: diffusers.EulerDiscreteScheduler(timestep_spacing="leading"),
    lambda: diffusers.DPMSolverMultistepScheduler(),
    lambda: diffusers.EulerDiscreteScheduler(timestep_spacing="leading", prediction_type="v_prediction"),
])
def test_scheduler_bridge_on_schedulers_with_their_own_sigma_grid(unet, make):
    p = prompt()
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(12), dtype=F64)
    ref = pipeline_loop(unet, make(), noise, p.embeds, 6)
    sched = make()
    D = DiffusersDenoiser(unet, sched, quantize=True)
    sched.set_timesteps(6)
    out = sample_with_scheduler(D, sched, noise * sched.init_noise_sigma, p, num_inference_steps=6)
    torch.testing.assert_close(out, ref, rtol=2e-5, atol=2e-5)
    grid = scheduler_sigmas(make(), 6, dtype=F64)
    assert len(grid) == 7 and grid[-1] == 0
    if isinstance(sched, diffusers.EulerDiscreteScheduler):
        # diffusers' Euler scheduler is localscore's Euler sampler from the matching start
        from localscore.adapters.diffusers import scheduler_start
        from localscore.sampling import sample_euler

        x, sigmas = scheduler_start(make(), noise * sched.init_noise_sigma, 6)
        torch.testing.assert_close(sample_euler(bind(D, p), x, sigmas), ref, rtol=2e-5, atol=2e-5)


def test_scheduler_bridge_with_fractional_timesteps(unet):
    """Euler with 'linspace' spacing has fractional timesteps; the denoiser's log-sigma interpolation of the
    timestep differs from Euler's linear one by a fraction of a step, so the samples agree closely."""
    p = prompt()
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(13), dtype=F64)
    make = lambda: diffusers.EulerDiscreteScheduler(timestep_spacing="linspace")  # noqa: E731
    ref = pipeline_loop(unet, make(), noise, p.embeds, 6)
    sched = make()
    sched.set_timesteps(6)
    out = sample_with_scheduler(DiffusersDenoiser(unet, sched), sched, noise * sched.init_noise_sigma, p,
                                num_inference_steps=6)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-3)


def test_prompt_batch_indexing():
    p = prompt(batch=3, regions=halves(1)).ablate(0)
    q = p[1]
    assert q.batch_size == 1 and torch.equal(q.embeds, p.embeds[1:2]) and q.regions.shape[0] == 1
    assert torch.equal(q.effective_embeds(), p.effective_embeds()[1:2])
    r = p[1:]
    assert r.batch_size == 2 and torch.equal(r.effective_embeds(), p.effective_embeds()[1:])
    with pytest.raises(LocalScoreError, match="out of range"):
        p[3]
    with pytest.raises(LocalScoreError, match="selects no prompt"):
        p[3:]


# ------------------------------------------------------------------------------------------------ the set protocol
def test_prompts_implement_the_conditioner_set_protocol():
    p = prompt(batch=2, regions=halves(1))
    assert p.num_slots == 2 and p.valid is p.active
    # pad_to: inactive groups without tokens, empty regions; the model input is unchanged
    q = p.pad_to(4)
    assert q.num_slots == 4 and q.valid[:, 2:].sum() == 0 and not q.groups[:, 2:].any()
    assert torch.equal(q.effective_embeds(), p.effective_embeds()) and not q.regions[:, 2:].any()
    with pytest.raises(LocalScoreError, match="below"):
        p.pad_to(1)
    with pytest.raises(LocalScoreError, match="no token"):           # only an inactive group may be empty
        q.replace(active=torch.ones_like(q.active))
    # cat: batches concatenate (G padded to the largest); the shared null embedding stays shared
    one = PromptConditions(p.embeds[:1], [[1, 2]], null_embeds=p.null_embeds, regions=halves(1)[:, :1])
    c = PromptConditions.cat([p, one])
    assert c.batch_size == 3 and c.valid.tolist() == [[True, True], [True, True], [True, False]]
    assert c.null_embeds is not None and c.null_embeds.shape[0] == 1
    for b, (src, i) in enumerate([(p, 0), (p, 1), (one, 0)]):
        assert torch.equal(c[b].effective_embeds(), src[i].effective_embeds())
        assert torch.equal(c.regions[b, : src.num_slots], src.regions[0])
    with pytest.raises(LocalScoreError, match="token shapes"):
        PromptConditions.cat([p, PromptConditions(torch.zeros(1, 3, D_EMB, dtype=F64), [[1]])])
    with pytest.raises(LocalScoreError, match="regions"):
        PromptConditions.cat([p, p.with_regions(None)])
    # repeat_interleave and batch indexing by lists and tensors
    r = p.ablate(1)[[1, 0]].repeat_interleave(2)
    assert r.batch_size == 4 and torch.equal(r.effective_embeds()[2], p.ablate(1).effective_embeds()[0])
    assert p[torch.tensor([False, True])].batch_size == 1


def test_influence_of_padding_and_absent_concepts_is_zero(unet):
    D = DiffusersDenoiser(unet, diffusers.DDIMScheduler())
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3), dtype=F64)
    p = prompt().pad_to(3)
    abl = ablation_influence(D, x, 1.0, p)
    assert abl.shape == (1, 3, 8, 8) and float(abl[0, 2].abs().max()) == 0.0 and float(abl[0, 0].max()) > 0
    torch.testing.assert_close(abl[:, :2], ablation_influence(D, x, 1.0, prompt()))
    with torch.no_grad():
        gi = gradient_influence(D, x, 1.0, p.ablate(0), probes=2, generator=torch.Generator().manual_seed(0))
    assert float(gi[0, 0].abs().max()) == 0.0 and float(gi[0, 2].abs().max()) == 0.0 and float(gi[0, 1].max()) > 0


def test_deprecated_names_warn_and_keep_their_values(unet):
    """0.1.0's adapter influence functions (norms), resize_regions and PromptConditions.drop, for one release."""
    import localscore.adapters.diffusers as ad

    D = DiffusersDenoiser(unet, diffusers.DDIMScheduler())
    p = prompt()
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5), dtype=F64)
    with pytest.warns(DeprecationWarning, match="localscore.metrics.ablation_influence") as rec:
        old = ad.ablation_influence(D, x, 1.0, p, mode="only")
    assert rec[0].filename == __file__
    for g in range(2):                                   # 0.1.0's norm, not its square
        torch.testing.assert_close(old[:, g], (D(x, 1.0, p.select(g)) - D(x, 1.0, p.drop_all())).norm(dim=1))
    fn = FeatureMap(D, unet, "down_blocks.0.attentions.0")
    with pytest.warns(DeprecationWarning, match="localscore.metrics.gradient_influence"):
        old_g = ad.gradient_influence(fn, x, 1.0, p.ablate(1), probes=2, generator=torch.Generator().manual_seed(2))
    new_g = gradient_influence(fn, x, 1.0, p.ablate(1), probes=2, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(old_g[:, 0], new_g[:, 0].sqrt())
    assert float(old_g[:, 1].max()) > 0 and float(new_g[:, 1].max()) == 0   # 0.1.0 measured absent concepts too
    with pytest.warns(DeprecationWarning, match="localscore.nn.pool_mask"):
        assert torch.equal(ad.resize_regions(halves(), (4, 4), coarse="all"), pool_mask(halves(), 2, coarse="all"))
    with pytest.warns(DeprecationWarning, match="PromptConditions.ablate"):
        assert torch.equal(p.drop(0).active, p.ablate(0).active)
    with pytest.warns(DeprecationWarning, match="use localscore.bind"):
        bound = ad.bind_prompt(D, p)
    with pytest.warns(DeprecationWarning, match="localscore.denoisers.BoundDenoiser"):
        bound2 = ad.PromptBound(D, p)
    assert bound.prompt is p and bound2.cond is p
    torch.testing.assert_close(bound(x, 1.0), bind(D, p)(x, 1.0), rtol=0, atol=0)


def test_importing_the_adapter_never_imports_diffusers():
    import subprocess
    import sys

    code = ("import sys, localscore.adapters.diffusers as d, localscore.metrics; "
            "assert 'diffusers' not in sys.modules, 'imported'; print(len(d.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # positive control: the check sees diffusers in sys.modules (planted, without the cost of importing it)
    planted = code.replace("localscore.metrics; ", "localscore.metrics; sys.modules['diffusers'] = sys; ")
    bad = subprocess.run([sys.executable, "-c", planted], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "imported" in bad.stderr


class TinyEps(torch.nn.Module):
    """A stand-in with diffusers' UNet signature whose output depends on the prompt."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(D_EMB, 4, dtype=F64))

    def forward(self, sample, timestep, encoder_hidden_states, return_dict=False):
        shift = (encoder_hidden_states.mean(1) @ self.w)[:, :, None, None]
        return (0.3 * sample + shift * torch.tanh(sample),)


@pytest.mark.parametrize("model", ["fake", "unet"])
def test_concept_composition_batched_is_one_call_per_step(unet, model):
    """The composition of a prompt's concepts goes through compose like objects do: with strategy "batched"
    the background and the G components share one model call, as projective_from on any set, and give the
    numbers of the sequential strategy (G + 1 calls)."""
    from localscore.compose import projective_from
    from localscore.sampling import sample_euler

    net = TinyEps() if model == "fake" else unet
    calls = {"n": 0}
    hook = net.register_forward_pre_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    try:
        D = DiffusersDenoiser(net, diffusers.DDIMScheduler(clip_sample=False))
        p = PromptConditions(torch.randn(1, T_TOK, D_EMB, dtype=F64), [[1], [2], [3]],
                             null_embeds=torch.zeros(1, T_TOK, D_EMB, dtype=F64))
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
        outs = {}
        for strategy, want in (("sequential", 4), ("batched", 1)):
            calls["n"] = 0
            outs[strategy] = concept_composition(D, p, strategy=strategy)(x, 1.5)
            assert calls["n"] == want, (strategy, calls["n"])
        torch.testing.assert_close(outs["batched"], outs["sequential"], rtol=1e-10, atol=1e-12)
        calls["n"] = 0
        torch.testing.assert_close(projective_from(D, p, strategy="batched")(x, 1.5), outs["sequential"],
                                   rtol=1e-10, atol=1e-12)
        assert calls["n"] == 1
        # by hand: D(none) + sum_g (D(p_g) - D(none))
        bg = D(x, 1.5, p.drop_all())
        want = bg + sum(D(x, 1.5, q) - bg for q in p.singletons())
        torch.testing.assert_close(outs["batched"], want, rtol=1e-10, atol=1e-12)
        # one call per sampler step
        calls["n"] = 0
        sample_euler(concept_composition(D, p, strategy="batched"), x, torch.tensor([2.0, 1.0, 0.5, 0.0], dtype=F64))
        assert calls["n"] == 3
    finally:
        hook.remove()
