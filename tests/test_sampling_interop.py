"""Interop: diffusers' own sampling loop reproduced by ``sample_with_scheduler`` (the scheduler's own timesteps) and by
localscore's samplers on the scheduler's grid; k-diffusion-style models as localscore denoisers and localscore
denoisers in k-diffusion-style samplers."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

from localscore import Conditions, LocalScoreError
from localscore.adapters.k_diffusion import from_k_diffusion
from localscore.compose import projective
from localscore.denoisers import DiscreteDDPMDenoiser, bind
from localscore.oracles import GaussianMixture
from localscore.sampling import sample_ddim, sample_dpmpp_2m, sample_euler, sample_unipc
from localscore.schedules import karras_sigmas

diffusers = pytest.importorskip("diffusers")

from localscore.adapters.diffusers import sample_with_scheduler, scheduler_sigmas, scheduler_start  # noqa: E402

F64 = torch.float64
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers")


def tiny(x_in: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
    """The issue's tiny deterministic model: ``0.5 * sample + 0.1 * sin(t)`` (t as the network sees it)."""
    return 0.5 * x_in + 0.1 * torch.sin(t.to(x_in.dtype)).view(-1, 1, 1, 1)


def pipeline_loop(sched: Any, latents: torch.Tensor, n: int) -> torch.Tensor:
    """diffusers' own loop, as in its pipelines."""
    sched.set_timesteps(n)
    for t in sched.timesteps:
        x_in = sched.scale_model_input(latents, t)
        out = tiny(x_in, torch.as_tensor(t).expand(latents.shape[0]))
        latents = sched.step(out, t, latents, return_dict=False)[0]
    return latents


SCHEDULERS = {
    "ddim": lambda: diffusers.DDIMScheduler(clip_sample=False),
    "ddim_clipping": lambda: diffusers.DDIMScheduler(),          # clip_sample=True: reproduced (step() clips)
    "ddim_v": lambda: diffusers.DDIMScheduler(clip_sample=False, prediction_type="v_prediction"),
    "euler_linspace": lambda: diffusers.EulerDiscreteScheduler(timestep_spacing="linspace"),
    "euler_leading": lambda: diffusers.EulerDiscreteScheduler(timestep_spacing="leading"),
    "euler_karras": lambda: diffusers.EulerDiscreteScheduler(use_karras_sigmas=True),
    "dpmpp_2m": lambda: diffusers.DPMSolverMultistepScheduler(),
    "dpmpp_2m_karras": lambda: diffusers.DPMSolverMultistepScheduler(use_karras_sigmas=True),
    "unipc_karras": lambda: diffusers.UniPCMultistepScheduler(use_karras_sigmas=True),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_bridge_reproduces_the_pipeline_loop(name: str, dtype: torch.dtype) -> None:
    make = SCHEDULERS[name]
    n = 12
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=F64).to(dtype)
    ref_sched = make()
    ref_sched.set_timesteps(n)
    latents = noise * ref_sched.init_noise_sigma
    ref = pipeline_loop(ref_sched, latents, n)
    sched = make()
    D = DiscreteDDPMDenoiser(tiny, sched.alphas_cumprod, prediction=sched.config.prediction_type)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for denoiser in (D, bind(D, None), projective(D, [bind(D, None)])):   # plain, bound, inside a composition
        out = sample_with_scheduler(denoiser, sched, latents, num_inference_steps=n)
        torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    assert "sigma_to_t" not in D.__dict__                      # the override is gone after the call
    assert (ref - latents).abs().max() > 0.1


def test_the_old_guess_was_wrong_and_quantize_no_longer_matters() -> None:
    """Negative control: the denoiser's own sigma -> t map (no override) misses DPM++ 2M Karras, whose timesteps are
    rounded while its sigmas are not; the bridge is right with either `quantize`."""
    n = 12
    latents = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    make = SCHEDULERS["dpmpp_2m_karras"]
    ref = pipeline_loop(make(), latents, n)
    for quantize in (False, True):
        D = DiscreteDDPMDenoiser(tiny, make().alphas_cumprod, quantize=quantize)
        torch.testing.assert_close(sample_with_scheduler(D, make(), latents, num_inference_steps=n), ref,
                                   rtol=1e-12, atol=1e-12)
    hidden = DiscreteDDPMDenoiser(tiny, make().alphas_cumprod)
    closure = lambda x, s, c=None: hidden(x, s, c)  # noqa: E731  (not reachable by attribute traversal)
    out = sample_with_scheduler(closure, make(), latents, num_inference_steps=n)
    assert (out - ref).abs().max() > 1e-4


def sigma_free(x_in: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
    return 0.5 * x_in - 0.2 * x_in.flip(-1)


@pytest.mark.parametrize(("make", "sampler", "kwargs"), [
    (lambda: diffusers.DPMSolverMultistepScheduler(use_karras_sigmas=True), sample_dpmpp_2m, {}),
    (lambda: diffusers.DPMSolverMultistepScheduler(), sample_dpmpp_2m, {}),
    (lambda: diffusers.UniPCMultistepScheduler(use_karras_sigmas=True), sample_unipc, {}),
    (lambda: diffusers.UniPCMultistepScheduler(solver_order=3), sample_unipc, {"order": 3}),
    (lambda: diffusers.EulerDiscreteScheduler(use_karras_sigmas=True), sample_euler, {}),
])
def test_localscore_samplers_take_the_schedulers_steps(make: Any, sampler: Any, kwargs: dict[str, Any]) -> None:
    """On the scheduler's grid and start, localscore's sampler is the scheduler's algorithm ("DPM++ 2M Karras" is
    ``sample_dpmpp_2m`` on a Karras grid): float64 samples, float32 scheduler coefficients, so 1e-5."""
    n = 15
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    sched = make()
    sched.set_timesteps(n)
    latents = noise * sched.init_noise_sigma
    ref = latents
    for t in sched.timesteps:
        ref = sched.step(sigma_free(sched.scale_model_input(ref, t), t), t, ref, return_dict=False)[0]
    D = DiscreteDDPMDenoiser(sigma_free, make().alphas_cumprod)
    x, sigmas = scheduler_start(make(), latents, n)
    torch.testing.assert_close(sampler(D, x, sigmas, **kwargs), ref, rtol=1e-5, atol=1e-5)


def test_clipping_schedulers_warn_for_localscore_samplers() -> None:
    latents = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(3), dtype=F64)
    with pytest.warns(UserWarning, match="clip_sample=True"):
        scheduler_sigmas(diffusers.DDIMScheduler(), 8)
    with pytest.warns(UserWarning, match="thresholding"):
        scheduler_start(diffusers.DDPMScheduler(thresholding=True), latents, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scheduler_start(diffusers.DDIMScheduler(clip_sample=False), latents, 8)
    # what the warning is about: with large samples, clipping changes the result by far more than round-off
    D = DiscreteDDPMDenoiser(lambda x, t, c=None: -2 * x, diffusers.DDIMScheduler().alphas_cumprod)
    with pytest.warns(UserWarning):
        x, sig = scheduler_start(diffusers.DDIMScheduler(), latents, 8)
    clipped = sample_with_scheduler(D, diffusers.DDIMScheduler(), latents, num_inference_steps=8)
    unclipped = sample_with_scheduler(D, diffusers.DDIMScheduler(clip_sample=False), latents, num_inference_steps=8)
    torch.testing.assert_close(sample_ddim(D, x, sig), unclipped, rtol=1e-5, atol=1e-5)
    assert (clipped - unclipped).abs().max() > 0.5


# --------------------------------------------------------------------------------------------------- k-diffusion
MIXTURE = GaussianMixture(torch.tensor([0.4, 0.6], dtype=F64),
                          torch.tensor([[-1.0], [1.5]], dtype=F64).view(2, 1, 1, 1), std=0.5)


class KStyle(torch.nn.Module):
    """A model with k-diffusion's calling convention (like its ``external`` wrappers): cond by keyword only."""

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        shift = kwargs.get("cond")
        out = MIXTURE(x, sigma)
        return out if shift is None else out + shift.attr[:, :1, :1].view(-1, 1, 1, 1)


def test_from_k_diffusion_passes_cond_by_keyword() -> None:
    cond = Conditions.from_lists([[(0.0, 0.0)], [(1.0, 1.0)]], attrs=[[[0.5]], [[-0.5]]])
    x = torch.randn(2, 1, 1, 1, dtype=F64)
    with pytest.raises(TypeError):              # the failure of the issue: cond positionally
        KStyle()(x, torch.ones(2, dtype=F64), cond)
    D = from_k_diffusion(KStyle())
    torch.testing.assert_close(D(x, torch.ones(2, dtype=F64), cond), MIXTURE(x, 1.0) + torch.tensor(
        [0.5, -0.5], dtype=F64).view(2, 1, 1, 1))
    sig = karras_sigmas(10, 0.01, 10.0, dtype=F64)
    torch.testing.assert_close(sample_dpmpp_2m(D, 10 * x, sig), sample_dpmpp_2m(MIXTURE, 10 * x, sig))
    out = sample_dpmpp_2m(projective(bind(D, None), [bind(D, cond)]), 10 * x, sig)   # and in a composition
    assert torch.isfinite(out).all()
    with pytest.raises(LocalScoreError, match="cond_key"):
        from_k_diffusion(KStyle(), cond_key="not a name")
    with pytest.raises(LocalScoreError, match="expected shape"):
        from_k_diffusion(lambda x, s, **k: x[:, :0])(x, 1.0)


def k_style_euler(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict[str, Any] | None = None
                  ) -> torch.Tensor:
    """A k-diffusion-style sampler (its calling convention: ``model(x, sigma [B], **extra_args)``)."""
    extra_args = extra_args or {}
    for i in range(len(sigmas) - 1):
        d = (x - model(x, sigmas[i] * x.new_ones(x.shape[0]), **extra_args)) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


def test_localscore_denoisers_run_in_k_diffusion_style_samplers() -> None:
    from localscore import LocalConditionalDenoiser
    from localscore.compose import projective_from

    torch.manual_seed(0)
    net = LocalConditionalDenoiser(width=8, depth=1, heads=2, attr_dim=0, cond_radius=1.5).eval()
    cond = Conditions.from_lists([[(1.0, 1.0), (6.0, 6.0)]])
    x = 3 * torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    sig = karras_sigmas(6, 0.05, 3.0)
    with torch.no_grad():
        torch.testing.assert_close(k_style_euler(net, x, sig, {"cond": cond}), sample_euler(net, x, sig, cond))
        comp = projective_from(net, cond)
        torch.testing.assert_close(k_style_euler(comp, x, sig), sample_euler(comp, x, sig))
