"""Denoiser adapters against the Gaussian oracle's closed form, the score, binding, and bad input."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from localscore import Conditions, LocalScoreError, bind, score
from localscore.denoisers import (
    BoundDenoiser,
    DiscreteDDPMDenoiser,
    EDMPreconditioner,
    EpsilonDenoiser,
    ScoreDenoiser,
    VDenoiser,
    X0Denoiser,
    call_denoiser,
    conditioner_radius,
    receptive_radius,
    tweedie,
)
from localscore.oracles import Gaussian
from localscore.schedules import ddpm_alphas_cumprod

F64 = torch.float64
MEAN = torch.tensor([0.5, -1.0, 0.2, 1.5], dtype=F64)
COV = torch.tensor([[1.0, 0.3, 0.0, 0.1], [0.3, 0.5, 0.1, 0.0], [0.0, 0.1, 0.8, -0.2], [0.1, 0.0, -0.2, 0.3]],
                   dtype=F64)
ORACLE = Gaussian(MEAN.view(1, 2, 2), COV)


def _col(s: torch.Tensor) -> torch.Tensor:
    return s.view(-1, 1, 1, 1)


def dense_score(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """-(Sigma + sigma^2 I)^{-1} (x - mu), solved densely per image."""
    out = []
    for b in range(x.shape[0]):
        a = COV + float(sigma[b]) ** 2 * torch.eye(4, dtype=F64)
        out.append(-torch.linalg.solve(a, x[b].flatten() - MEAN))
    return torch.stack(out).view(x.shape)


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sigma = torch.exp(torch.empty(5, dtype=F64).uniform_(-3, 3, generator=g))
    x = MEAN.view(1, 1, 2, 2) + _col(1 + sigma) * torch.randn(5, 1, 2, 2, generator=g, dtype=F64)
    return x, sigma


# -------------------------------------------------------------------------------------- adapters = oracle
@pytest.mark.parametrize("vp_input", [True, False])
def test_epsilon_network_gives_the_oracle(vp_input: bool) -> None:
    def eps_net(x_in: torch.Tensor, s: torch.Tensor, c: Any) -> torch.Tensor:
        x = x_in * _col(torch.sqrt(s**2 + 1)) if vp_input else x_in
        return (x - ORACLE(x, s)) / _col(s)       # E[eps | x] = (x - E[x0 | x]) / sigma

    x, sigma = _inputs()
    torch.testing.assert_close(EpsilonDenoiser(eps_net, vp_input=vp_input)(x, sigma), ORACLE(x, sigma))


def test_noise_input_map() -> None:
    def eps_net(x_in: torch.Tensor, c_noise: torch.Tensor, c: Any) -> torch.Tensor:
        s = torch.exp(4 * c_noise)
        x = x_in * _col(torch.sqrt(s**2 + 1))
        return (x - ORACLE(x, s)) / _col(s)

    x, sigma = _inputs(1)
    d = EpsilonDenoiser(eps_net, noise_input=lambda s: torch.log(s) / 4)
    torch.testing.assert_close(d(x, sigma), ORACLE(x, sigma))


@pytest.mark.parametrize("sigma_data", [1.0, 0.5])
def test_v_network_gives_the_oracle(sigma_data: float) -> None:
    sd = sigma_data

    def v_net(x_in: torch.Tensor, s: torch.Tensor, c: Any) -> torch.Tensor:
        sv = _col(s)
        x = x_in * torch.sqrt(sv**2 + sd**2)
        x0 = ORACLE(x, s)
        eps = (x - x0) / sv
        return (sd * eps - sv * x0 / sd) / torch.sqrt(sv**2 + sd**2)   # v of Salimans & Ho, data scaled by sd

    x, sigma = _inputs(2)
    torch.testing.assert_close(VDenoiser(v_net, sigma_data=sd)(x, sigma), ORACLE(x, sigma))


def test_x0_and_score_networks_give_the_oracle() -> None:
    x, sigma = _inputs(3)
    x0_net = X0Denoiser(lambda x_in, s, c: ORACLE(x_in * _col(torch.sqrt(s**2 + 1)), s))
    torch.testing.assert_close(x0_net(x, sigma), ORACLE(x, sigma))
    score_net = ScoreDenoiser(lambda y, s, c: dense_score(y, s))
    torch.testing.assert_close(score_net(x, sigma), ORACLE(x, sigma))


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_discrete_ddpm_network_gives_the_oracle(prediction: str) -> None:
    ac = ddpm_alphas_cumprod(1000, dtype=F64)
    seen_t: list[torch.Tensor] = []

    def net(x_vp: torch.Tensor, t: torch.Tensor, c: Any) -> torch.Tensor:
        seen_t.append(t)
        a = ac[t.round().long()]                              # the table entry of timestep t
        s = torch.sqrt((1 - a) / a)
        x = x_vp / _col(torch.sqrt(a))                          # VE variable
        x0 = ORACLE(x, s)
        eps = (x - x0) / _col(s)
        if prediction == "epsilon":
            return eps
        if prediction == "v_prediction":
            return _col(torch.sqrt(a)) * eps - _col(torch.sqrt(1 - a)) * x0
        return x0

    d = DiscreteDDPMDenoiser(net, ac, prediction=prediction)  # type: ignore[arg-type]
    t = torch.tensor([0, 10, 250, 600, 999])
    sigma = torch.sqrt((1 - ac[t]) / ac[t])
    x = MEAN.view(1, 1, 2, 2) + _col(1 + sigma) * torch.randn(5, 1, 2, 2, dtype=F64)
    torch.testing.assert_close(d(x, sigma), ORACLE(x, sigma))
    torch.testing.assert_close(seen_t[-1], t.to(F64), atol=1e-6, rtol=0)   # table sigmas map to their timesteps


def test_discrete_ddpm_quantize_and_time_maps() -> None:
    ac = ddpm_alphas_cumprod(100, dtype=F64)
    seen: list[torch.Tensor] = []
    d = DiscreteDDPMDenoiser(lambda x, t, c: (seen.append(t), torch.zeros_like(x))[1], ac, quantize=True)
    sig = torch.sqrt((1 - ac) / ac)
    mid = torch.sqrt(sig[40] * sig[41]).view(1) * 1.01     # between timesteps 40 and 41, nearer 41 in log sigma
    d(torch.zeros(1, 1, 1, 1, dtype=F64), mid)
    assert seen[-1].item() == 41.0
    t = torch.tensor([0.0, 3.4, 42.25, 99.0])
    torch.testing.assert_close(d.sigma_to_t(d.t_to_sigma(t)), t.round())
    with pytest.raises(LocalScoreError, match="outside"):
        d(torch.zeros(1, 1, 1, 1), float(sig[-1]) * 2)


def test_edm_preconditioner_formula() -> None:
    sd, s = 0.5, 2.0
    c_skip, c_out, c_in, c_noise = sd**2 / (s**2 + sd**2), s * sd / math.sqrt(s**2 + sd**2), \
        1 / math.sqrt(s**2 + sd**2), math.log(s) / 4
    d = EDMPreconditioner(lambda x_in, cn, c: 3 * x_in + _col(cn), sigma_data=sd)
    x = torch.tensor([1.0, -2.0], dtype=F64).view(2, 1, 1, 1)
    want = c_skip * x + c_out * (3 * c_in * x + c_noise)
    torch.testing.assert_close(d(x, s), want)
    torch.testing.assert_close(d.loss_weight(torch.tensor([s], dtype=F64)), torch.tensor([1 / c_out**2], dtype=F64))


def test_edm_preconditioner_with_the_optimal_network_gives_the_oracle() -> None:
    sd = 0.7

    def f_star(x_in: torch.Tensor, c_noise: torch.Tensor, c: Any) -> torch.Tensor:
        s = _col(torch.exp(4 * c_noise))
        x = x_in * torch.sqrt(s**2 + sd**2)
        target_x0 = ORACLE(x, s.flatten())
        # E[F_target | x] with F_target = (x0 - c_skip x) / c_out (Karras et al., eq. 8)
        return (target_x0 - sd**2 / (s**2 + sd**2) * x) / (s * sd / torch.sqrt(s**2 + sd**2))

    x, sigma = _inputs(4)
    torch.testing.assert_close(EDMPreconditioner(f_star, sigma_data=sd)(x, sigma), ORACLE(x, sigma))


def test_score_of_the_oracle_is_the_analytic_score() -> None:
    x, sigma = _inputs(5)
    torch.testing.assert_close(score(ORACLE)(x, sigma), dense_score(x, sigma))
    torch.testing.assert_close(ORACLE.score(x, sigma), dense_score(x, sigma))
    # round trip through the score-network adapter
    torch.testing.assert_close(ScoreDenoiser(lambda y, s, c: score(ORACLE)(y, s))(x, sigma), ORACLE(x, sigma))


def test_bind_and_radii() -> None:
    cond = Conditions.from_lists([[(1.0, 1.0)], [(0.0, 0.0), (1.0, 0.0)]])
    seen: list[Any] = []
    d = bind(lambda x, s, c: (seen.append(c), x * _col(c.counts().to(x.dtype)))[1], cond)
    out = d(torch.ones(4, 1, 1, 1), 1.0)      # batch 4 = 2 x the bound batch: tiled
    assert out.flatten().tolist() == [1.0, 2.0, 1.0, 2.0]
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    net.receptive_radius = 1  # type: ignore[assignment]
    net.conditioner_radius = 2  # type: ignore[assignment]
    wrapped = bind(EDMPreconditioner(net), None)
    assert receptive_radius(wrapped) == 1 and conditioner_radius(wrapped) == 2
    assert receptive_radius(lambda x, s, c: x) is None


# ------------------------------------------------------------------------------------------------ bad input
def _meta_conditions(batch: int) -> Conditions:
    c = Conditions.from_lists([[(1.0, 1.0)]] * batch)
    fake = object.__new__(Conditions)
    for name in ("pos", "attr", "valid"):
        v = getattr(c, name)
        object.__setattr__(fake, name, None if v is None else v.to("meta"))
    return fake


def _zero_net(x: torch.Tensor, s: torch.Tensor, c: Any = None) -> torch.Tensor:
    return torch.zeros_like(x)


ADAPTERS = {
    "eps": lambda net: EpsilonDenoiser(net),
    "v": lambda net: VDenoiser(net),
    "x0": lambda net: X0Denoiser(net),
    "score_net": lambda net: ScoreDenoiser(net),
    "edm": lambda net: EDMPreconditioner(net),
    "ddpm": lambda net: DiscreteDDPMDenoiser(net, ddpm_alphas_cumprod(1000)),
    "score": lambda net: score(net),
    "bind": lambda net: bind(net, None),
}
CALL_CASES = ["x_rank", "x_int", "x_nan", "x_empty", "x_list", "sig_neg", "sig_nan", "sig_zero", "sig_len",
              "sig_2d", "sig_meta", "sig_bool", "sig_str", "net_shape", "net_type"]


@pytest.mark.parametrize("kind", list(ADAPTERS))
def test_the_bad_call_baseline_is_valid(kind: str) -> None:
    """Positive control of test_bad_calls_raise: its arguments, before one is spoiled, are accepted (a check
    rejecting every call would otherwise pass every bad case)."""
    out = ADAPTERS[kind](_zero_net)(torch.zeros(2, 1, 2, 2), 0.5)
    assert out.shape == (2, 1, 2, 2) and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("kind", list(ADAPTERS))
@given(case=st.sampled_from(CALL_CASES))
def test_bad_calls_raise(kind: str, case: str) -> None:
    net: Any = _zero_net
    x: Any = torch.zeros(2, 1, 2, 2)
    sigma: Any = 0.5
    if case == "x_rank":
        x = torch.zeros(1, 2, 2)
    elif case == "x_int":
        x = torch.zeros(2, 1, 2, 2, dtype=torch.int32)
    elif case == "x_nan":
        x = torch.full((2, 1, 2, 2), math.nan)
    elif case == "x_empty":
        x = torch.zeros(0, 1, 2, 2)
    elif case == "x_list":
        x = [[[[0.0]]]]
    elif case == "sig_neg":
        sigma = -0.5
    elif case == "sig_nan":
        sigma = torch.tensor([0.5, math.nan])
    elif case == "sig_zero":
        sigma = 0.0
    elif case == "sig_len":
        sigma = torch.ones(3)
    elif case == "sig_2d":
        sigma = torch.ones(2, 1)
    elif case == "sig_meta":
        sigma = torch.ones(2, device="meta")
    elif case == "sig_bool":
        sigma = True
    elif case == "sig_str":
        sigma = "0.5"
    elif case == "net_shape":
        net = lambda x, s, c=None: x[:, :, :1]  # noqa: E731
    elif case == "net_type":
        net = lambda x, s, c=None: x.tolist()  # noqa: E731
    d = ADAPTERS[kind](net)
    # the message names what is wrong: the argument `x` or `sigma`, or what the wrapped model returned
    with pytest.raises(LocalScoreError, match={"x": "`x`", "sig": "`sigma`", "net": "returned"}[case.split("_")[0]]):
        d(x, sigma)


@pytest.mark.parametrize("make", [
    lambda: EpsilonDenoiser(3), lambda: VDenoiser(_zero_net, sigma_data=0.0),
    lambda: VDenoiser(_zero_net, sigma_data=math.nan), lambda: EDMPreconditioner(_zero_net, sigma_data=-1.0),
    lambda: EDMPreconditioner(_zero_net, sigma_data=math.nan), lambda: X0Denoiser("net"), lambda: ScoreDenoiser(None),
    lambda: DiscreteDDPMDenoiser(_zero_net, torch.tensor([0.9])),
    lambda: DiscreteDDPMDenoiser(_zero_net, torch.tensor([0.9, 0.95])),
    lambda: DiscreteDDPMDenoiser(_zero_net, torch.tensor([0.9, 0.0])),
    lambda: DiscreteDDPMDenoiser(_zero_net, torch.tensor([1.2, 0.5])),
    lambda: DiscreteDDPMDenoiser(_zero_net, torch.tensor([0.9, math.nan])),
    lambda: DiscreteDDPMDenoiser(_zero_net, torch.ones(2, 2) * 0.5),
    lambda: DiscreteDDPMDenoiser(_zero_net, [0.9, 0.5]),
    lambda: DiscreteDDPMDenoiser(_zero_net, torch.tensor([0.9, 0.5]), prediction="noise"),  # type: ignore[arg-type]
    lambda: score(3.0), lambda: bind(None, None), lambda: bind(_zero_net, [(1.0, 1.0)]),
])
def test_bad_construction_raises(make: Any) -> None:
    with pytest.raises(LocalScoreError):
        make()


@given(case=st.sampled_from(["cond_given", "batch", "meta"]))
def test_bound_denoiser_bad_calls_raise(case: str) -> None:
    cond = Conditions.from_lists([[(1.0, 1.0)], [(0.0, 0.0)]])
    d: BoundDenoiser = bind(_zero_net, cond)
    assert d(torch.zeros(4, 1, 2, 2), 0.5).shape == (4, 1, 2, 2)  # positive control: a multiple of B is fine
    x = torch.zeros(3 if case == "batch" else 2, 1, 2, 2)
    with pytest.raises(LocalScoreError, match={"cond_given": "another `cond`", "batch": "B = 2 but x has B = 3",
                                               "meta": "on meta"}[case]):
        if case == "cond_given":
            d(x, 0.5, cond)
        elif case == "batch":
            d(x, 0.5)
        else:
            bind(_zero_net, _meta_conditions(2))(x, 0.5)


@given(case=st.sampled_from(["shape", "type", "nan"]))
def test_call_denoiser_checks_the_output(case: str) -> None:
    out = {"shape": lambda x, s, c: x[:1], "type": lambda x, s, c: 1.0, "nan": lambda x, s, c: x / 0}[case]
    assert call_denoiser(_zero_net, torch.zeros(2, 1, 1, 1), torch.ones(2), None, "test").shape == (2, 1, 1, 1)
    with pytest.raises(LocalScoreError, match=r"^test: `denoiser` returned " + {"shape": r"shape \(1, 1, 1, 1\)",
                                                                                "type": "float",
                                                                                "nan": "non-finite"}[case]):
        call_denoiser(out, torch.zeros(2, 1, 1, 1), torch.ones(2), None, "test")


def test_bind_takes_any_conditioner_set() -> None:
    """A set type other than Conditions (a minimal one here) is bound and tiled through its own `cat`."""
    from localscore import LocalScoreError, bind

    class Tags:
        """K tags per image as a conditioner set: values [B, K], valid [B, K]."""

        def __init__(self, values: torch.Tensor, valid: torch.Tensor) -> None:
            self.values, self.valid = values, valid
            self.batch_size, self.num_slots, self.device = values.shape[0], values.shape[1], values.device

        def select(self, j):
            return Tags(self.values[:, j : j + 1], self.valid[:, j : j + 1])

        def ablate(self, j):
            return Tags(self.values, self.valid & (torch.arange(self.num_slots) != j))

        def drop_all(self):
            return Tags(self.values, self.valid & False)

        def singletons(self):
            return [self.select(j) for j in range(self.num_slots)]

        def pad_to(self, k):
            return self

        def __getitem__(self, i):
            return Tags(self.values[i], self.valid[i])

        def repeat_interleave(self, n):
            return Tags(self.values.repeat_interleave(n, 0), self.valid.repeat_interleave(n, 0))

        def to(self, device=None, dtype=None):
            return self

        @staticmethod
        def cat(items):
            return Tags(torch.cat([t.values for t in items]), torch.cat([t.valid for t in items]))

    t = Tags(torch.tensor([[1.0, 2.0]]), torch.tensor([[True, True]]))
    D = lambda x, s, c: x + (c.values * c.valid).sum(1).view(-1, 1, 1, 1)  # noqa: E731
    out = bind(D, t)(torch.zeros(3, 1, 1, 1), 1.0)                      # the set is tiled to 3 images
    assert out.flatten().tolist() == [3.0, 3.0, 3.0]
    assert bind(D, t.ablate(0))(torch.zeros(1, 1, 1, 1), 1.0).item() == 2.0
    with pytest.raises(LocalScoreError, match="conditioner set"):
        bind(D, torch.zeros(1, 2))


# -------------------------------------------------------------------------------------- Tweedie, scalings, dtype
def test_tweedie_is_the_closed_form_score() -> None:
    x, sigma = _inputs(7)
    torch.testing.assert_close(tweedie(ORACLE(x, sigma), x, sigma), dense_score(x, sigma), rtol=1e-10, atol=1e-12)
    # a float and a 0-dim tensor act on every image; a [1] tensor broadcasts
    d = torch.zeros_like(x)
    assert torch.equal(tweedie(d, x, 2.0), -x / 4)
    assert torch.equal(tweedie(d, x, torch.tensor(2.0, dtype=F64)), -x / 4)
    assert torch.equal(tweedie(d, x, torch.tensor([2.0], dtype=F64)), -x / 4)
    with pytest.raises(LocalScoreError, match="tweedie: `sigma` has shape"):
        tweedie(d, x, torch.ones(3, dtype=F64))
    with pytest.raises(LocalScoreError, match="tweedie"):
        tweedie(d, x, torch.ones(5, 1, dtype=F64))


def _textbook_scalings(kind: str, s: float) -> tuple[float, float, float]:
    """(c_skip, c_out, c_in) written out from the papers, for one sigma."""
    vp = 1 / math.sqrt(s**2 + 1)
    return {
        "eps": (1.0, -s, vp), "eps_ve": (1.0, -s, 1.0), "x0": (0.0, 1.0, vp), "x0_ve": (0.0, 1.0, 1.0),
        "score": (1.0, s**2, 1.0),
        "v": (0.25 / (s**2 + 0.25), -s * 0.5 / math.sqrt(s**2 + 0.25), 1 / math.sqrt(s**2 + 0.25)),
        "edm": (0.25 / (s**2 + 0.25), s * 0.5 / math.sqrt(s**2 + 0.25), 1 / math.sqrt(s**2 + 0.25)),
        "ddpm_epsilon": (1.0, -s, vp), "ddpm_v_prediction": (1 / (s**2 + 1), -s * vp, vp),
        "ddpm_sample": (0.0, 1.0, vp),
    }[kind]


def _scaled_adapters(net: Any) -> dict[str, Any]:
    ac = ddpm_alphas_cumprod(1000, dtype=F64)
    return {
        "eps": EpsilonDenoiser(net), "eps_ve": EpsilonDenoiser(net, vp_input=False), "x0": X0Denoiser(net),
        "x0_ve": X0Denoiser(net, vp_input=False), "score": ScoreDenoiser(net), "v": VDenoiser(net, sigma_data=0.5),
        "edm": EDMPreconditioner(net, sigma_data=0.5),
        **{f"ddpm_{p}": DiscreteDDPMDenoiser(net, ac, prediction=p)  # type: ignore[arg-type]
           for p in ("epsilon", "v_prediction", "sample")},
    }


@pytest.mark.parametrize("kind", ["eps", "eps_ve", "x0", "x0_ve", "score", "v", "edm", "ddpm_epsilon",
                                  "ddpm_v_prediction", "ddpm_sample"])
def test_every_adapter_is_its_scalings_and_the_one_forward(kind: str) -> None:
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def net(x_in: torch.Tensor, noise: torch.Tensor, c: Any) -> torch.Tensor:
        seen.append((x_in, noise))
        return torch.sin(3 * x_in) + 0.1 * _col(noise)

    d = _scaled_adapters(net)[kind]
    assert "forward" not in vars(type(d)) and "_denoise" not in vars(type(d))  # one shared forward
    sigma = torch.tensor([0.05, 0.7, 3.0, 40.0], dtype=F64)
    x = torch.randn(4, 2, 3, 3, dtype=F64, generator=torch.Generator().manual_seed(0)) * _col(1 + sigma)
    out = d(x, sigma)
    for b, s in enumerate(sigma.tolist()):
        c_skip, c_out, c_in = _textbook_scalings(kind, s)
        torch.testing.assert_close(seen[-1][0][b], c_in * x[b], rtol=1e-14, atol=0)
        noise = seen[-1][1][b]
        torch.testing.assert_close(out[b], c_skip * x[b] + c_out * (torch.sin(3 * c_in * x[b]) + 0.1 * noise),
                                   rtol=1e-13, atol=1e-13)
    # the noise input each parameterisation gives its network
    noise = seen[-1][1]
    if kind == "edm":
        torch.testing.assert_close(noise, sigma.log() / 4, rtol=1e-15, atol=0)
    elif kind.startswith("ddpm"):
        torch.testing.assert_close(d.t_to_sigma(noise), sigma, rtol=1e-12, atol=0)
    else:
        assert torch.equal(noise, sigma)


def _ddpm_reference(ac: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """t(sigma) in float64 by numpy: linear interpolation of the timestep in log sigma_t."""
    import numpy as np

    log_table = np.log(np.sqrt((1 - ac.numpy()) / ac.numpy()))
    return torch.from_numpy(np.interp(np.log(sigma.numpy()), log_table, np.arange(float(len(log_table)))))


def test_discrete_ddpm_keeps_its_table_in_the_input_dtype() -> None:
    # float64 inputs: t(sigma) and D against a float64 closed form (with a float32 table: 3e-5 and 3e-6 off)
    ac = ddpm_alphas_cumprod(1000, dtype=F64)
    d = DiscreteDDPMDenoiser(lambda x, t, c: torch.sin(x) * (1 + _col(t) / 1000), ac)
    sigma = torch.exp(torch.linspace(math.log(0.02), math.log(150.0), 9, dtype=F64))
    t_ref = _ddpm_reference(ac, sigma)
    assert d.sigma_to_t(sigma).dtype == F64
    torch.testing.assert_close(d.sigma_to_t(sigma), t_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(d.t_to_sigma(t_ref), sigma, rtol=1e-13, atol=0)
    x = torch.randn(9, 2, 3, 3, dtype=F64, generator=torch.Generator().manual_seed(1)) * _col(1 + sigma)
    want = x - _col(sigma) * torch.sin(x / _col(torch.sqrt(sigma**2 + 1))) * (1 + _col(t_ref) / 1000)
    torch.testing.assert_close(d(x, sigma), want, rtol=0, atol=1e-12)
    # float32 inputs use the table in float32 (as before); casting the module never rounds the table
    assert d.sigma_to_t(sigma.float()).dtype == torch.float32
    torch.testing.assert_close(d.sigma_to_t(sigma.float()).double(), t_ref, rtol=0, atol=2e-3)
    d.half()
    d.float()
    assert d.sigmas.dtype == F64 and d.log_sigmas.dtype == F64
    torch.testing.assert_close(d.sigma_to_t(sigma), t_ref, rtol=0, atol=1e-10)
    assert d.sigma_to_t(sigma.half()).dtype == torch.float32  # half precision computes in float32
