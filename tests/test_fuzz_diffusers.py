"""Fuzz tests of :mod:`localscore.adapters.diffusers` (prompts, denoiser, schedulers, regional attention,
features, influence) on a tiny random ``UNet2DConditionModel`` (no download): bad input raises a LocalScoreError
that names what was expected; legitimate variants (non-contiguous, channels-last, requires_grad, float32 input
to a float64 UNet) give the reference result. ``python tests/test_fuzz_diffusers.py results.json`` classifies
``CASES`` for the table of ``docs/reliability.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

diffusers = pytest.importorskip("diffusers")

from localscore import LocalScoreError  # noqa: E402
from localscore.adapters.diffusers import (  # noqa: E402
    DiffusersDenoiser,
    FeatureMap,
    FeatureRecorder,
    PromptConditions,
    concept_composition,
    concept_feature_means,
    concept_locality,
    concept_orthogonality,
    install_regional_attention,
    list_blocks,
    regional_attention,
    sample_with_scheduler,
    scheduler_sigmas,
    scheduler_start,
    ve_to_vp,
    vp_to_ve,
)

sys.path.insert(0, str(Path(__file__).parent))
from _diffusers_models import D_EMB, T_TOK, tiny_unet  # noqa: E402
from _fuzz import Case, case_adders, cases_main, check_case  # noqa: E402

F64 = torch.float64
CASES: list[Case] = []
bad, ok = case_adders(CASES)
NAN, INF = float("nan"), float("inf")


_UNET: list[torch.nn.Module] = []


def _unet() -> torch.nn.Module:
    if not _UNET:
        _UNET.append(tiny_unet())
    return _UNET[0]


def _sched(**kw: Any) -> Any:
    return diffusers.DDIMScheduler(num_train_timesteps=100, clip_sample=False, **kw)


def _D() -> DiffusersDenoiser:
    return DiffusersDenoiser(_unet(), _sched())


def _emb(B: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randn(B, T_TOK, D_EMB, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _p(B: int = 1, **kw: Any) -> PromptConditions:
    return PromptConditions(_emb(B), [[1, 2], [3]], null_embeds=_emb(1, 7), **kw)


def _x(B: int = 1, dtype: torch.dtype = F64, H: int = 8, W: int = 8, seed: int = 2) -> torch.Tensor:
    return torch.randn(B, 4, H, W, generator=torch.Generator().manual_seed(seed), dtype=F64).to(dtype)


def _halves(B: int = 1, size: int = 8) -> torch.Tensor:
    r = torch.zeros(B, 2, size, size, dtype=torch.bool)
    r[:, 0, :, : size // 2] = True
    r[:, 1, :, size // 2:] = True
    return r


def _regional_call(regions: torch.Tensor) -> torch.Tensor:
    with regional_attention(_unet()):
        return _D()(_x(), 1.0, _p(regions=regions))


# ---------------------------------------------------------------------------- prompts
bad("prompts", "embeds [T, D]", lambda: PromptConditions(_emb()[0], [[1]]))
bad("prompts", "embeds int64", lambda: PromptConditions(_emb().long(), [[1]]))
bad("prompts", "embeds NaN", lambda: PromptConditions(_emb() * NAN, [[1]]))
bad("prompts", "embeds on meta", lambda: PromptConditions(_emb().to("meta"), [[1]]))
bad("prompts", "null_embeds inf", lambda: PromptConditions(_emb(), [[1]], null_embeds=_emb() * INF))
bad("prompts", "groups overlapping", lambda: PromptConditions(_emb(), [[1, 2], [2]]))
bad("prompts", "group token 99 of 5", lambda: PromptConditions(_emb(), [[99]]))
bad("prompts", "groups 'ab'", lambda: PromptConditions(_emb(), "ab"))  # type: ignore[arg-type]
bad("prompts", "groups float tensor", lambda: PromptConditions(_emb(), torch.ones(1, T_TOK)))
bad("prompts", "active [1, 3] for G = 2", lambda: _p(active=torch.ones(1, 3, dtype=torch.bool)))
bad("prompts", "null_embeds of another T", lambda: PromptConditions(_emb(), [[1]], null_embeds=torch.zeros(1, 3, D_EMB,
                                                                                                          dtype=F64)))
bad("prompts", "added_cond_kwargs a list", lambda: _p(added_cond_kwargs=[1]))  # type: ignore[arg-type]
bad("prompts", "added_cond_kwargs of batch 3 for B = 1", lambda: _p(added_cond_kwargs={"time_ids": torch.ones(3, 6)}))
bad("prompts", "attention_mask [1, 3]", lambda: _p(attention_mask=torch.ones(1, 3)))
bad("prompts", "regions NaN", lambda: _p(regions=torch.full((1, 2, 8, 8), NAN)))
bad("prompts", "regions 2.0", lambda: _p(regions=torch.full((1, 2, 8, 8), 2.0)))
bad("prompts", "regions [1, 3, 8, 8] for G = 2", lambda: _p(regions=torch.ones(1, 3, 8, 8, dtype=torch.bool)))
bad("prompts", "select(5)", lambda: _p().select(5))
bad("prompts", "ablate('a')", lambda: _p().ablate("a"))  # type: ignore[arg-type]
bad("prompts", "pad_to(1) below G", lambda: _p().pad_to(1))
bad("prompts", "pad_to(10**12)", lambda: _p().pad_to(10**12))
bad("prompts", "repeat(10**12)", lambda: _p().repeat(10**12))
bad("prompts", "repeat_interleave(10**12)", lambda: _p().repeat_interleave(10**12))
bad("prompts", "index 3 of B = 1", lambda: _p()[3])
bad("prompts", "cat of prompts with different T", lambda: PromptConditions.cat(
    [_p(), PromptConditions(torch.zeros(1, 3, D_EMB, dtype=F64), [[1]])]))
bad("prompts", "cat([])", lambda: PromptConditions.cat([]))
bad("prompts", "to(dtype=torch.int64)", lambda: _p().to(dtype=torch.int64))
ok("prompts", "effective_embeds of ablate(0) = null at its tokens", lambda: (
    _p().ablate(0).effective_embeds()[0, 1:3], _emb(1, 7)[0, 1:3]))
ok("prompts", "pad_to(4) keeps the embeddings", lambda: (_p().pad_to(4).effective_embeds(), _p().effective_embeds()))

# ---------------------------------------------------------------------------- denoiser
bad("denoiser", "DiffusersDenoiser unet 3", lambda: DiffusersDenoiser(3, _sched()))  # type: ignore[arg-type]
bad("denoiser", "DiffusersDenoiser scheduler 'ddim'", lambda: DiffusersDenoiser(_unet(), "ddim"))
bad("denoiser", "DiffusersDenoiser alphas_cumprod NaN", lambda: DiffusersDenoiser(_unet(), torch.full((10,), NAN)))
bad("denoiser", "DiffusersDenoiser alphas_cumprod increasing", lambda: DiffusersDenoiser(
    _unet(), torch.linspace(0.1, 0.9, 10)))
bad("denoiser", "DiffusersDenoiser prediction_type 'x'", lambda: DiffusersDenoiser(_unet(), _sched(),
                                                                                   prediction_type="x"))
bad("denoiser", "DiffusersDenoiser quantize 'yes'", lambda: DiffusersDenoiser(_unet(), _sched(),
                                                                              quantize="yes"))  # type: ignore
bad("denoiser", "DiffusersDenoiser null_prompt a tensor", lambda: DiffusersDenoiser(_unet(), _sched(),
                                                                                    null_prompt=_emb()))  # type: ignore
bad("denoiser", "call cond None without null_prompt", lambda: _D()(_x(), 1.0))
bad("denoiser", "call cond a Conditions", lambda: _D()(_x(), 1.0, __import__("localscore").Conditions.from_lists(
    [[(1.0, 1.0)]])))
bad("denoiser", "call x NaN", lambda: _D()(_x() * NAN, 1.0, _p()))
bad("denoiser", "call x on meta", lambda: _D()(_x().to("meta"), 1.0, _p()))
bad("denoiser", "call x of 3 channels", lambda: _D()(_x()[:, :3], 1.0, _p()))
bad("denoiser", "call sigma 0", lambda: _D()(_x(), 0.0, _p()))
bad("denoiser", "call sigma 1e30 (beyond the schedule)", lambda: _D()(_x(), 1e30, _p()))
bad("denoiser", "call prompt batch 2 for 3 images", lambda: _D()(_x(B=3), 1.0, _p(2)))
bad("denoiser", "call regions without regional attention", lambda: _D()(_x(), 1.0, _p(regions=_halves())))
bad("denoiser", "call regions 4x4 for 8x8 latents", lambda: _regional_call(_halves(size=4)))
bad("denoiser", "vp_to_ve latents NaN", lambda: vp_to_ve(_x() * NAN, 1.0))
bad("denoiser", "ve_to_vp sigma -1", lambda: ve_to_vp(_x(), -1.0))
bad("denoiser", "concept_composition prompt a tensor", lambda: concept_composition(_D(), _emb()))  # type: ignore
bad("denoiser", "concept_composition weights of 3 for 2 concepts", lambda: concept_composition(
    _D(), _p(), [1.0, 1.0, 1.0])(_x(), 1.0))
ok("denoiser", "call float32 x (UNet float64, casts_inputs)", lambda: (_D()(_x(dtype=torch.float32), 1.0, _p()),
                                                                      _D()(_x(), 1.0, _p()).float()))
ok("denoiser", "call non-contiguous x", lambda: (_D()(_x(W=16)[..., ::2], 1.0, _p()),
                                                 _D()(_x(W=16)[..., ::2].contiguous(), 1.0, _p())))
ok("denoiser", "call channels-last x", lambda: (_D()(_x().to(memory_format=torch.channels_last), 1.0, _p()),
                                                _D()(_x(), 1.0, _p())))
ok("denoiser", "call requires_grad x", lambda: (_D()(_x().requires_grad_(), 1.0, _p()).detach(), _D()(_x(), 1.0, _p())))

# ---------------------------------------------------------------------------- schedulers
bad("schedulers", "scheduler_sigmas scheduler 3", lambda: scheduler_sigmas(3))
bad("schedulers", "scheduler_sigmas steps 0", lambda: scheduler_sigmas(_sched(), 0))
bad("schedulers", "scheduler_sigmas steps 10**9 (above the 100 training steps)", lambda: scheduler_sigmas(_sched(),
                                                                                                          10**9))
bad("schedulers", "scheduler_sigmas dtype int64", lambda: scheduler_sigmas(_sched(), 4, dtype=torch.int64))
bad("schedulers", "scheduler_start latents NaN", lambda: scheduler_start(_sched(), _x() * NAN, 4))
bad("schedulers", "scheduler_start steps -1", lambda: scheduler_start(_sched(), _x(), -1))
bad("schedulers", "scheduler_start steps 10**9", lambda: scheduler_start(_sched(), _x(), 10**9))
bad("schedulers", "sample_with_scheduler denoiser 3", lambda: sample_with_scheduler(3, _sched(), _x(), _p(),
                                                                                    num_inference_steps=2))
bad("schedulers", "sample_with_scheduler steps 10**9", lambda: sample_with_scheduler(
    _D(), _sched(), _x(), _p(), num_inference_steps=10**9))
bad("schedulers", "sample_with_scheduler latents on meta", lambda: sample_with_scheduler(
    _D(), _sched(), _x().to("meta"), _p(), num_inference_steps=2))
bad("schedulers", "sample_with_scheduler callback 3", lambda: sample_with_scheduler(
    _D(), _sched(), _x(), _p(), num_inference_steps=2, callback=3))  # type: ignore[arg-type]
bad("schedulers", "sample_with_scheduler denoiser returns NaN", lambda: sample_with_scheduler(
    lambda x, s, c: x * NAN, _sched(), _x(), None, num_inference_steps=2))
ok("schedulers", "sample_with_scheduler float32 latents (float64 UNet)", lambda: (
    sample_with_scheduler(_D(), _sched(), _x(dtype=torch.float32), _p(), num_inference_steps=2),
    sample_with_scheduler(_D(), _sched(), _x(), _p(), num_inference_steps=2).float()))

# ---------------------------------------------------------------------------- regional attention
bad("regional", "install_regional_attention model 3", lambda: install_regional_attention(3))  # type: ignore
bad("regional", "install_regional_attention coarse 'mean'", lambda: install_regional_attention(
    _unet(), coarse="mean"))  # type: ignore[arg-type]
bad("regional", "regional_attention on a model without cross-attention", lambda: regional_attention(
    torch.nn.Linear(2, 2)).__enter__())
ok("regional", "regions of all-ones = no regions", lambda: (
    _regional_call(torch.ones(1, 2, 8, 8, dtype=torch.bool)), _D()(_x(), 1.0, _p())))

# ---------------------------------------------------------------------------- features and influence
bad("features", "list_blocks model 3", lambda: list_blocks(3))  # type: ignore[arg-type]
bad("features", "list_blocks max_depth -1", lambda: list_blocks(_unet(), max_depth=-1))
bad("features", "FeatureRecorder unknown block", lambda: FeatureRecorder(_unet(), ["no.such.block"]))
bad("features", "FeatureRecorder names [3]", lambda: FeatureRecorder(_unet(), [3]))  # type: ignore[list-item]
bad("features", "FeatureMap unknown block", lambda: FeatureMap(_D(), _unet(), "no.such.block"))
bad("features", "FeatureMap denoiser 3", lambda: FeatureMap(3, _unet(), "mid_block"))  # type: ignore[arg-type]
bad("features", "concept_feature_means prompts []", lambda: concept_feature_means(_D(), _x(), 1.0, [], _p()))
bad("features", "concept_feature_means prompts a PromptConditions", lambda: concept_feature_means(
    _D(), _x(), 1.0, _p(), _p().drop_all()))  # type: ignore[arg-type]
bad("features", "concept_feature_means x NaN", lambda: concept_feature_means(
    _D(), _x() * NAN, 1.0, [_p().select(0)], _p().drop_all()))
bad("features", "concept_feature_means fn returns a list", lambda: concept_feature_means(
    lambda x, s, c: [1], _x(), 1.0, [_p().select(0)], _p().drop_all()))
bad("features", "concept_feature_means fn returns NaN", lambda: concept_feature_means(
    lambda x, s, c: x * NAN, _x(), 1.0, [_p().select(0)], _p().drop_all()))
bad("features", "concept_orthogonality labels of 3 for 2 prompts", lambda: concept_orthogonality(
    _D(), _x(), 1.0, [_p().select(0), _p().select(1)], _p().drop_all(), labels=["a", "b", "c"]))
ok("features", "concept_feature_means float32 x = float64 x", lambda: (
    concept_feature_means(_D(), _x(dtype=torch.float32), 1.0, [_p().select(0)], _p().drop_all())[0],
    concept_feature_means(_D(), _x(), 1.0, [_p().select(0)], _p().drop_all())[0].float()))
bad("influence", "concept_locality influence [B, G]", lambda: concept_locality(torch.ones(1, 2), _p(regions=_halves())))
bad("influence", "concept_locality no regions", lambda: concept_locality(torch.ones(1, 2, 8, 8), _p()))
bad("influence", "concept_locality influence NaN", lambda: concept_locality(torch.full((1, 2, 8, 8), NAN),
                                                                            _p(regions=_halves())))
bad("influence", "concept_locality influence negative", lambda: concept_locality(-torch.ones(1, 2, 8, 8),
                                                                                 _p(regions=_halves())))
bad("influence", "concept_locality coarse 'mean'", lambda: concept_locality(
    torch.ones(1, 2, 8, 8), _p(regions=_halves()), coarse="mean"))  # type: ignore[arg-type]
ok("influence", "concept_locality of an influence inside its region = 1", lambda: (
    torch.as_tensor(concept_locality(_halves().double(), _p(regions=_halves())).index), torch.tensor(1.0)))


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_diffusers_case(case: Case) -> None:
    check_case(case)


ARGS = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**12), st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=2))


@settings(max_examples=15, deadline=None)
@given(method=st.sampled_from(["select", "ablate", "pad_to", "repeat", "repeat_interleave", "__getitem__"]),
       value=ARGS)
def test_fuzzed_prompt_slot_and_batch_methods(method: str, value: Any) -> None:
    try:
        out = getattr(_p(), method)(value)
    except LocalScoreError as e:
        assert "expected" in str(e) or "Fix:" in str(e), e
        return
    assert isinstance(out, PromptConditions) and torch.isfinite(out.effective_embeds()).all()


@settings(max_examples=6, deadline=None)
@given(sigma=ARGS, steps=ARGS)
def test_fuzzed_sigma_and_steps(sigma: Any, steps: Any) -> None:
    for call in (lambda: _D()(_x(), sigma, _p()), lambda: scheduler_sigmas(_sched(), steps),
                 lambda: vp_to_ve(_x(), sigma)):
        try:
            out = call()
        except LocalScoreError as e:
            assert "expected" in str(e) or "Fix:" in str(e), e
            continue
        assert torch.isfinite(out).all()


if __name__ == "__main__":  # pragma: no cover
    cases_main(CASES)
