"""The cases of issue 18 for the core library, one by one: each bad input raises a LocalScoreError, each
legitimate variant gives the reference result.

Under pytest every case runs in-process (about 3 s in all). Run as a script, every case runs in a forked child
with a 20 s watchdog and a 12 GiB address-space limit, and is classified (clear error, right answer, obscure
error, silent NaN, accepted, silently wrong, hang): that is how the before/after table of
``docs/reliability.md`` is made (``python tests/test_fuzz_issue18.py results.json``; ``--table BEFORE AFTER``
prints the table of two such runs).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import localscore
from localscore import Conditions
from localscore import compose as C
from localscore import denoisers as DN
from localscore import masks as M
from localscore import metrics as MT
from localscore import sampling as SP
from localscore import schedules as S
from localscore.adapters.k_diffusion import from_k_diffusion
from localscore.nn import GlobalConditionalDenoiser, LocalConditionalDenoiser, localize

sys.path.insert(0, str(Path(__file__).parent))
from _fuzz import Case, cases_main, check_case

CASES: list[Case] = []  # (area, name, kind, fn); kind "bad" (must raise) or "ok" (fn returns (out, reference))


def bad(area: str, name: str) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    def deco(f: Callable[[], Any]) -> Callable[[], Any]:
        CASES.append((area, name, "bad", f))
        return f

    return deco


def ok(area: str, name: str) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    def deco(f: Callable[[], Any]) -> Callable[[], Any]:
        CASES.append((area, name, "ok", f))
        return f

    return deco


def net() -> LocalConditionalDenoiser:
    torch.manual_seed(0)
    return LocalConditionalDenoiser(width=8, attr_dim=0)


def x(dtype: torch.dtype = torch.float32, device: str = "cpu", B: int = 1, H: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, 3, H, H, generator=g).to(dtype).to(device)


def cond(B: int = 1, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Conditions:
    return Conditions.from_lists([[(3.0, 3.0)]] * B).to(device=device, dtype=dtype)


def grid(n: int = 3, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return S.karras_sigmas(n, 0.1, 5.0).to(dtype)


class _KNet(torch.nn.Module):
    """A k-diffusion-style model with float32 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, a: torch.Tensor, s: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.conv(a)


# ---- networks: dtype / device
for dt in (torch.float64, torch.float16, torch.bfloat16):
    bad("networks", f"LocalConditionalDenoiser float32 net, {dt} x")(lambda dt=dt: net()(x(dt), 1.0, cond(dtype=dt)))
    bad("networks", f"GlobalConditionalDenoiser float32 net, {dt} x")(
        lambda dt=dt: GlobalConditionalDenoiser(
            base_width=8, attr_dim=0, groups=4, token_dim=8, heads=2, sigma_embed_dim=16
        )(x(dt), 1.0, None)
    )
bad("networks", "meta x")(lambda: net()(x(device="meta"), 1.0, None))
bad("networks", "float64 sigma tensor to float32 net, x on meta")(
    lambda: net()(x(device="meta"), torch.tensor([1.0]), None)
)
ok("networks", "float64 net + float64 x (double())")(
    lambda: (net().double()(x(torch.float64), 1.0, None), net()(x(), 1.0, None).double())
)
ok("networks", "non-contiguous x")(
    lambda: (net()(x(H=16)[..., ::2, ::2], 1.0, None), net()(x(H=16)[..., ::2, ::2].contiguous(), 1.0, None))
)
ok("networks", "channels-last x")(
    lambda: (net()(x().to(memory_format=torch.channels_last), 1.0, cond()), net()(x(), 1.0, cond()))
)
ok("networks", "requires_grad x")(lambda: (net()(x().requires_grad_(), 1.0, cond()).detach(), net()(x(), 1.0, cond())))
ok("networks", "localize(net) float32")(
    lambda: (localize(net(), M.DiscRule(2.0))(x(), 1.0, cond()), localize(net(), M.DiscRule(2.0))(x(), 1.0, cond()))
)
bad("networks", "localize(net) float64 x")(lambda: localize(net(), M.DiscRule(2.0))(x(torch.float64), 1.0, cond()))

# ---- samplers
for name in ("sample_heun", "sample_euler", "sample_dpmpp_2m", "sample_ddim"):
    f = getattr(SP, name)
    bad("samplers", f"{name}: float32 net, float64 x")(lambda f=f: f(net(), x(torch.float64) * 5, grid(), None))
    bad("samplers", f"{name}: float32 net, float16 x")(lambda f=f: f(net(), x(torch.float16) * 5, grid(), None))
    bad("samplers", f"{name}: meta x")(lambda f=f: f(net(), x(device="meta"), grid(), None))
bad("samplers", "sample_heun: sigmas on meta")(lambda: SP.sample_heun(net(), x(), grid().to("meta"), None))
ok("samplers", "sample_heun: float32 net, float64 cond (cast to x dtype)")(
    lambda: (
        SP.sample_heun(net(), x() * 5, grid(), cond(dtype=torch.float64)),
        SP.sample_heun(net(), x() * 5, grid(), cond()),
    )
)
ok("samplers", "sample_heun: float64 sigmas with float32 x")(
    lambda: (
        SP.sample_heun(net(), x() * 5, grid(dtype=torch.float64), cond()),
        SP.sample_heun(net(), x() * 5, grid(), cond()),
    )
)
ok("samplers", "sample_heun: non-contiguous x")(
    lambda: (
        SP.sample_heun(net(), (x(H=16) * 5)[..., ::2, ::2], grid(), None),
        SP.sample_heun(net(), (x(H=16) * 5)[..., ::2, ::2].contiguous(), grid(), None),
    )
)
ok("samplers", "sample_heun: channels-last x")(
    lambda: (
        SP.sample_heun(net(), (x() * 5).to(memory_format=torch.channels_last), grid(), None),
        SP.sample_heun(net(), x() * 5, grid(), None),
    )
)
ok("samplers", "sample_euler: float64 net and x")(
    lambda: (
        SP.sample_euler(net().double(), x(torch.float64) * 5, grid(dtype=torch.float64), None),
        SP.sample_euler(net(), x() * 5, grid(), None).double(),
    )
)
bad("samplers", "sample_heun: NaN in x")(lambda: SP.sample_heun(net(), x() * float("nan"), grid(), None))
bad("samplers", "sample_heun: inf in sigmas")(
    lambda: SP.sample_heun(net(), x(), torch.tensor([float("inf"), 1.0, 0.0]), None)
)

# ---- compose
bad("compose", "projective_from float32 net, float64 x")(
    lambda: C.projective_from(net(), cond(dtype=torch.float64))(x(torch.float64), 1.0)
)
bad("compose", "projective_from float32 net, float16 x")(
    lambda: C.projective_from(net(), cond())(x(torch.float16), 1.0)
)
bad("compose", "projective_from meta x")(lambda: C.projective_from(net(), cond())(x(device="meta"), 1.0))
bad("compose", "masked float32 net, float64 x")(
    lambda: C.masked(net(), [localscore.bind(net(), cond())], M.DiscRule(2.0), mask_cond=cond())(x(torch.float64), 1.0)
)
bad("compose", "masked_from float32 net, bfloat16 x")(
    lambda: C.masked_from(net(), cond(), M.DiscRule(2.0))(x(torch.bfloat16), 1.0)
)
bad("compose", "masked meta x")(
    lambda: C.masked(net(), [localscore.bind(net(), cond())], M.DiscRule(2.0), mask_cond=cond())(x(device="meta"), 1.0)
)
bad("compose", "residual float32 net, float64 x")(
    lambda: C.residual(net(), x(torch.float64), 1.0, cond(dtype=torch.float64))
)
ok("compose", "projective_from non-contiguous x")(
    lambda: (
        C.projective_from(net(), cond())(x(H=16)[..., ::2, ::2], 1.0),
        C.projective_from(net(), cond())(x(H=16)[..., ::2, ::2].contiguous(), 1.0),
    )
)
ok("compose", "projective_from float64 net")(
    lambda: (
        C.projective_from(net().double(), cond(dtype=torch.float64))(x(torch.float64), 1.0),
        C.projective_from(net(), cond())(x(), 1.0).double(),
    )
)
bad("compose", "projective_from NaN x")(lambda: C.projective_from(net(), cond())(x() * float("nan"), 1.0))

# ---- metrics
bad("metrics", "jacobian float32 net, float64 x")(lambda: MT.jacobian(lambda z: net()(z, 1.0, None), x(torch.float64)))
bad("metrics", "pixel_locality float32 net, float64 x")(lambda: MT.pixel_locality(net(), x(torch.float64), 1.0))
bad("metrics", "pixel_locality meta x")(lambda: MT.pixel_locality(net(), x(device="meta"), 1.0))
bad("metrics", "conditional_locality float32 net, float16 x")(
    lambda: MT.conditional_locality(net(), x(torch.float16), 1.0, cond())
)
bad("metrics", "conditional_locality meta x")(
    lambda: MT.conditional_locality(net(), x(device="meta"), 1.0, cond(device="meta"))
)
bad("metrics", "ablation_influence float32 net, float64 x")(
    lambda: MT.ablation_influence(net(), x(torch.float64), 1.0, cond(dtype=torch.float64))
)
bad("metrics", "pixel_locality string radius")(lambda: MT.pixel_locality(net(), x(), 1.0, method="colored", radius="3"))
bad("metrics", "conditional_locality empty set")(lambda: MT.conditional_locality(net(), x(), 1.0, Conditions.empty(1)))
bad("metrics", "conditional_locality all-padding set")(
    lambda: MT.conditional_locality(
        net(), x(), 1.0, Conditions(torch.zeros(1, 1, 2), valid=torch.zeros(1, 1, dtype=torch.bool))
    )
)
bad("metrics", "conditional_locality object off the image")(
    lambda: MT.conditional_locality(net(), x(), 1.0, Conditions.from_lists([[(100.0, 100.0)]]))
)
bad("metrics", "locality_index empty set")(
    lambda: MT.locality_index(torch.zeros(1, 0, 8, 8), 2.0, cond=Conditions.empty(1))
)
ok("metrics", "locality_index zero influence (documented: slot NaN, valid False)")(
    lambda: (
        (lambda r: [r.valid.tolist(), bool(r.inside.isnan().all())])(
            MT.locality_index(torch.zeros(1, 1, 8, 8), 2.0, cond=cond())
        ),
        [[[False]], True],
    )
)
bad("metrics", "jacobian radius=10**6 colored")(
    lambda: MT.jacobian(lambda z: z * 2, x(), method="colored", radius=10**6)
)
bad("metrics", "jacobian dense huge image (meta-size estimate)")(
    lambda: MT.jacobian(lambda z: z * 2, torch.zeros(1, 3, 512, 512))
)
bad("metrics", "jacobian NaN x")(lambda: MT.jacobian(lambda z: z * 2, x() * float("nan")))
ok("metrics", "jacobian non-contiguous")(
    lambda: (
        MT.jacobian(lambda z: z * z, x(H=16)[..., ::2, ::2]),
        MT.jacobian(lambda z: z * z, x(H=16)[..., ::2, ::2].contiguous()),
    )
)
ok("metrics", "jacobian float64")(
    lambda: (MT.jacobian(lambda z: z * z, x(torch.float64)), MT.jacobian(lambda z: z * z, x()).double())
)
bad("metrics", "feature_orthogonality NaN means")(
    lambda: MT.feature_orthogonality(torch.full((2, 3, 4, 4), float("nan")), torch.zeros(3, 4, 4))
)
ok("metrics", "feature_orthogonality float16 means vs float32 (computed in float64)")(
    lambda: (
        MT.feature_orthogonality(
            torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)).half(), torch.zeros(3, 4, 4)
        ).cosine,
        MT.feature_orthogonality(
            torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)).half().float(), torch.zeros(3, 4, 4)
        ).cosine,
    )
)

# ---- schedules
bad("schedules", "karras_sigmas(10, 1e-6, 1e300, rho=1e6)")(lambda: S.karras_sigmas(10, 1e-6, 1e300, rho=1e6))
bad("schedules", "loguniform_sigmas(10, 1e6, 1e300)")(lambda: S.loguniform_sigmas(10, 1e6, 1e300))
bad("schedules", "vp_linear_t_to_sigma(1e6)")(lambda: S.vp_linear_t_to_sigma(1e6))
bad("schedules", "vp_linear_t_to_sigma(tensor [1e6])")(lambda: S.vp_linear_t_to_sigma(torch.tensor([1e6])))
bad("schedules", "vp_cosine_t_to_sigma(1.0)")(lambda: S.vp_cosine_t_to_sigma(1.0))
bad("schedules", "karras_sigmas(10**10)")(lambda: S.karras_sigmas(10**10))
bad("schedules", "loguniform_sigmas(10**10)")(lambda: S.loguniform_sigmas(10**10))
bad("schedules", "vp_linear_sigmas(10**10)")(lambda: S.vp_linear_sigmas(10**10))
bad("schedules", "ddpm_alphas_cumprod(10**10)")(lambda: S.ddpm_alphas_cumprod(10**10))
bad("schedules", "karras_sigmas(1.5)")(lambda: S.karras_sigmas(1.5))
bad("schedules", "karras_sigmas rho=nan")(lambda: S.karras_sigmas(10, rho=float("nan")))
ok("schedules", "karras_sigmas on meta (shape only)")(
    lambda: (S.karras_sigmas(10, device="meta").shape, torch.Size([11]))
)
ok("schedules", "karras_sigmas float64")(
    lambda: (S.karras_sigmas(10, dtype=torch.float64), S.karras_sigmas(10).double())
)

# ---- masks and conditions
bad("masks", "disc_masks(cond, (10**9, 10**9), r)")(lambda: M.disc_masks(cond(), (10**9, 10**9), 2.0))
bad("masks", "gaussian_masks(cond, (10**6, 10**6), r)")(lambda: M.gaussian_masks(cond(), (10**6, 10**6), 2.0))
bad("masks", "voronoi_masks(cond, (10**6, 10**5))")(lambda: M.voronoi_masks(cond(), (10**6, 10**5)))
bad("masks", "distances(cond, (10**6, 10**6))")(lambda: M.distances(cond(), (10**6, 10**6)))
bad("masks", "pixel_grid((10**9, 10**9))")(lambda: M.pixel_grid((10**9, 10**9)))
bad("masks", "disc_masks NaN radius")(lambda: M.disc_masks(cond(), (8, 8), float("nan")))
bad("masks", "disc_masks string radius")(lambda: M.disc_masks(cond(), (8, 8), "2"))
ok("masks", "disc_masks meta cond (shape only)")(
    lambda: (M.disc_masks(cond(device="meta"), (8, 8), 2.0).shape, torch.Size([1, 1, 8, 8]))
)
bad("masks", "DiscRule(inf)")(lambda: M.DiscRule(float("inf"))(cond(), (8, 8)))
bad("masks", "union of wrong shape")(lambda: M.union(torch.zeros(3, 3)))
ok("masks", "disc_masks float64 cond")(
    lambda: (M.disc_masks(cond(dtype=torch.float64), (8, 8), 2.0), M.disc_masks(cond(), (8, 8), 2.0))
)
bad("conditions", "Conditions.pad_to(10**12)")(lambda: cond().pad_to(10**12))
bad("conditions", "Conditions.empty(10**12)")(lambda: Conditions.empty(10**12))
bad("conditions", "Conditions.repeat_interleave(10**12)")(lambda: cond().repeat_interleave(10**12))
bad("conditions", "Conditions.pad_to(2.5)")(lambda: cond().pad_to(2.5))
bad("conditions", "Conditions NaN pos")(lambda: Conditions(torch.full((1, 1, 2), float("nan"))))
ok("conditions", "Conditions float16 pos with float32 attr (one dtype per set)")(
    lambda: (str(Conditions(torch.zeros(1, 1, 2).half(), torch.zeros(1, 1, 3)).attr.dtype), "torch.float16")
)
bad("conditions", "Conditions meta pos with cpu valid")(
    lambda: Conditions(torch.zeros(1, 1, 2, device="meta"), valid=torch.ones(1, 1, dtype=torch.bool))
)
bad("conditions", "Conditions.select(5)")(lambda: cond().select(5))
bad("conditions", "Conditions.from_lists ragged")(lambda: Conditions.from_lists([[(1.0,)]]))
ok("conditions", "Conditions meta pos (metadata only)")(
    lambda: (Conditions(torch.zeros(1, 2, 2, device="meta")).num_slots, 2)
)

# ---- denoisers / adapters
bad("denoisers", "EDMPreconditioner(sigma_data=inf)")(
    lambda: DN.EDMPreconditioner(lambda a, b, c: a, sigma_data=float("inf"))
)
bad("denoisers", "EDMPreconditioner(sigma_data=nan)")(
    lambda: DN.EDMPreconditioner(lambda a, b, c: a, sigma_data=float("nan"))
)
bad("denoisers", "VDenoiser(sigma_data=inf)")(lambda: DN.VDenoiser(lambda a, b, c: a, sigma_data=float("inf")))
bad("denoisers", "VDenoiser(sigma_data='1')")(lambda: DN.VDenoiser(lambda a, b, c: a, sigma_data="1"))
bad("denoisers", "EpsilonDenoiser(vp_input='yes')")(lambda: DN.EpsilonDenoiser(lambda a, b, c: a, vp_input="yes"))
bad("denoisers", "X0Denoiser(vp_input=1)")(lambda: DN.X0Denoiser(lambda a, b, c: a, vp_input=1))
bad("denoisers", "EpsilonDenoiser wrapped NaN output")(
    lambda: DN.EpsilonDenoiser(lambda a, b, c: a * float("nan"))(x(), 1.0)
)
bad("denoisers", "EDMPreconditioner wrapped inf output")(
    lambda: DN.EDMPreconditioner(lambda a, b, c: a * float("inf"))(x(), 1.0)
)
bad("denoisers", "EpsilonDenoiser meta x")(lambda: DN.EpsilonDenoiser(lambda a, b, c: a)(x(device="meta"), 1.0))
bad("denoisers", "bind(net, cond) float64 x")(lambda: localscore.bind(net(), cond())(x(torch.float64), 1.0))
ok("denoisers", "EpsilonDenoiser float64")(
    lambda: (
        DN.EpsilonDenoiser(lambda a, b, c: a * 0.5)(x(torch.float64), 1.0),
        DN.EpsilonDenoiser(lambda a, b, c: a * 0.5)(x(), 1.0).double(),
    )
)


bad("denoisers", "from_k_diffusion wrapped NaN output")(
    lambda: from_k_diffusion(lambda a, s, **k: a * float("nan"))(x(), 1.0)
)
bad("denoisers", "from_k_diffusion string sigma")(lambda: from_k_diffusion(lambda a, s, **k: a)(x(), "1.0"))
bad("denoisers", "from_k_diffusion float32 net, float64 x")(lambda: from_k_diffusion(_KNet())(x(torch.float64), 1.0))
bad("samplers", "sample_heun: wrapped model NaN output (end-of-call check)")(
    lambda: SP.sample_heun(DN.EpsilonDenoiser(lambda a, b, c: a * float("nan")), x() * 5, grid(), None)
)
bad("metrics", "pixel_locality float radius")(lambda: MT.pixel_locality(net(), x(), 1.0, method="colored", radius=2.5))
bad("masks", "gaussian_masks NaN std")(lambda: M.gaussian_masks(cond(), (8, 8), float("nan")))
bad("masks", "box_masks((10**6, 10**6))")(lambda: M.box_masks(cond(), (10**6, 10**6), 2.0))
bad("schedules", "karras_sigmas float32 grid with sigma_max=1e39")(
    lambda: S.karras_sigmas(10, 1.0, 1e39, dtype=torch.float32)
)


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_issue18_case(case: Case) -> None:
    check_case(case)


if __name__ == "__main__":  # pragma: no cover - the table of docs/reliability.md
    cases_main(CASES, memory=12 * 1024**3)
