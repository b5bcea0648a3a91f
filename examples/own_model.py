"""Bring your own model: wrap a noise-predicting network, check its locality, compose objects, sample.

    python examples/own_model.py --quick --out out/own_model

The network below stands for yours: an ordinary PyTorch module that predicts the noise ``eps`` of a
discrete-time DDPM (1000 timesteps, linear betas) from ``(x_t, t, cond)``. Nothing in it depends on
localscore except that it reads its objects from a :class:`localscore.Conditions` and declares two
integers, ``receptive_radius`` and ``conditioner_radius``. It is trained here for a few hundred steps
only (``--quick``: 200 steps on 16x16 images with 1 or 2 coloured squares, a few seconds), so it is a
toy, not a good model; with your trained network the steps are the same (see docs/own_model.md):

1. wrap it as a denoiser ``D(x, sigma, cond)`` with :class:`~localscore.denoisers.DiscreteDDPMDenoiser`;
2. verify the declared radii with :func:`~localscore.testing.assert_pixel_local`,
   :func:`~localscore.testing.assert_conditionally_local` and :func:`~localscore.testing.assert_projective`,
   and show that radii one pixel smaller are caught;
3. compose single-object passes with :func:`~localscore.compose.projective_from` on a larger canvas with
   more objects than the network was trained on, and print what ``composed.plan()`` chose;
4. sample with Heun and report simple statistics of the samples.

Writes ``summary.json`` (and ``samples.png`` when matplotlib is installed) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from localscore import Conditions
from localscore.compose import projective_from
from localscore.denoisers import DiscreteDDPMDenoiser, conditioner_radius, receptive_radius
from localscore.sampling import sample_heun
from localscore.schedules import ddpm_alphas_cumprod, karras_sigmas
from localscore.testing import assert_conditionally_local, assert_pixel_local, assert_projective

COLOURS = torch.tensor([[0.9, -0.6, -0.6], [-0.6, 0.2, 0.9]])  # red, blue (images live in [-1, 1])
BACKGROUND = -0.3


# ------------------------------------------------------------------------------------------ your network
class MyEpsNet(nn.Module):
    """A user's noise-prediction network ``eps_hat = net(x_t, t, cond)``: three 3x3 convolutions.

    Each pixel reads the objects within Chebyshev distance ``reach`` of it (a box-shaped map of their
    presence and attributes, concatenated to the input), and the convolutions spread what it read by 3
    more pixels. Hence the two declared radii.
    """

    def __init__(self, channels: int = 3, attr_dim: int = 2, hidden: int = 16, reach: int = 2) -> None:
        super().__init__()
        self.attr_dim, self.reach = attr_dim, reach
        self.body = nn.Sequential(
            nn.Conv2d(channels + 1 + attr_dim + 1, hidden, 3, padding=1), nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.SiLU(),
            nn.Conv2d(hidden, channels, 3, padding=1))
        self.receptive_radius = 3                   # output pixel p reads input pixels within 3 of p
        self.conditioner_radius = reach + 3         # ... and objects within reach + 3 of p

    def object_map(self, cond: Conditions | None, B: int, H: int, W: int, like: Tensor) -> Tensor:
        """``[B, 1 + A, H, W]``: the presence and attributes of the valid objects within ``reach`` of each pixel."""
        if cond is None or cond.num_slots == 0:
            return like.new_zeros(B, 1 + self.attr_dim, H, W)
        rows = torch.arange(H, dtype=like.dtype, device=like.device).view(1, 1, H, 1)
        cols = torch.arange(W, dtype=like.dtype, device=like.device).view(1, 1, 1, W)
        pos = cond.pos.to(like.dtype)
        d = torch.maximum((rows - pos[..., 0, None, None]).abs(), (cols - pos[..., 1, None, None]).abs())
        near = (self.reach + 1 - d) * ((d <= self.reach) & cond.valid[..., None, None])  # [B, K, H, W]; padding: 0
        attr = cond.attr.to(like.dtype) if cond.attr is not None else like.new_zeros(B, cond.num_slots, 0)
        return torch.cat([near.sum(1, keepdim=True), torch.einsum("bkhw,bka->bahw", near, attr)], 1)

    def forward(self, x_t: Tensor, t: Tensor, cond: Conditions | None = None) -> Tensor:
        B, _, H, W = x_t.shape
        t_map = (t.to(x_t.dtype) / 1000).view(B, 1, 1, 1).expand(B, 1, H, W)        # global, but no pixel info
        # a skip connection: at high noise, most of x_t is the noise
        return x_t + self.body(torch.cat([x_t, self.object_map(cond, B, H, W, x_t), t_map], 1))


# ------------------------------------------------------------------------------------------ toy data
def scenes(n: int, counts: list[int], size: int, g: torch.Generator, min_gap: float = 4.0) -> tuple[Tensor, Conditions]:
    """Images ``[n, 3, size, size]`` of 3x3 coloured squares at integer positions, and their conditions."""
    pos_all, attr_all = [], []
    imgs = BACKGROUND + 0.05 * torch.randn(n, 3, size, size, generator=g)
    for b in range(n):
        k = counts[int(torch.randint(len(counts), (1,), generator=g))]
        pts: list[tuple[float, float]] = []
        while len(pts) < k:
            p = tuple(float(v) for v in torch.randint(1, size - 1, (2,), generator=g))
            if all(max(abs(p[0] - q[0]), abs(p[1] - q[1])) >= min_gap for q in pts):
                pts.append(p)  # type: ignore[arg-type]
        colours = torch.randint(2, (k,), generator=g).tolist()
        for (r, c), col in zip(pts, colours):
            imgs[b, :, int(r) - 1:int(r) + 2, int(c) - 1:int(c) + 2] = COLOURS[col].view(3, 1, 1)
        pos_all.append(pts)
        attr_all.append([[1.0 - col, float(col)] for col in colours])
    return imgs, Conditions.from_lists(pos_all, attr_all)


def train_ddpm(net: MyEpsNet, alphas_cumprod: Tensor, steps: int, batch: int, size: int, seed: int) -> float:
    """Your training loop, in your own convention: x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps, loss |eps_hat - eps|^2."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps, pct_start=0.1)
    loss = torch.tensor(0.0)
    for _ in range(steps):
        x0, cond = scenes(batch, [1, 2], size, g)
        t = torch.randint(len(alphas_cumprod), (x0.shape[0],), generator=g)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        eps = torch.randn(x0.shape, generator=g)
        loss = (net(a.sqrt() * x0 + (1 - a).sqrt() * eps, t.float(), cond) - eps).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return float(loss.detach())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200 training steps, 8 samples (CI, a few seconds)")
    ap.add_argument("--out", default="out/own_model", help="output folder (default: out/own_model)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()
    train_steps, batch, n_samples, sample_steps = (200, 16, 8, 12) if args.quick else (2000, 32, 16, 32)
    summary: dict = {"quick": args.quick, "train_steps": train_steps}

    # Your trained network (here: trained for a few steps, a toy).
    ac = ddpm_alphas_cumprod(1000)                           # the table the network was trained on
    net = MyEpsNet()
    summary["final_train_loss"] = train_ddpm(net, ac, train_steps, batch, 16, args.seed)
    net.eval()
    print(f"trained MyEpsNet for {train_steps} steps on 16x16 scenes with 1-2 squares "
          f"(final loss {summary['final_train_loss']:.3f}; a toy, not a good model)")

    # 1. Wrap it: D(x, sigma, cond) in the EDM convention x = x_0 + sigma * eps.
    D = DiscreteDDPMDenoiser(net, ac, prediction="epsilon")
    R, rc = receptive_radius(D), conditioner_radius(D)       # read through the adapter (.inner)
    assert R is not None and rc is not None
    print(f"wrapped: DiscreteDDPMDenoiser, sigma in [{D.sigma_min:.4f}, {D.sigma_max:.1f}]; "
          f"declared receptive_radius R = {R}, conditioner_radius rc = {rc}")

    # 2. Check the declared radii (exactly; a radius one smaller must fail).
    g = torch.Generator().manual_seed(args.seed + 1)
    x = torch.randn(2, 3, 20, 20, generator=g)
    cond = Conditions.from_lists([[(4.0, 5.0), (15.0, 14.5)], [(10.0, 10.0)]], [[[1, 0], [0, 1]], [[0, 1]]])
    sig = [0.05, 1.0, 20.0]
    with torch.no_grad():
        assert_pixel_local(D, x, sig, radius=R, cond=cond, generator=g)
        assert_conditionally_local(D, x, sig, cond, radius=rc, generator=g)
        far = Conditions.from_lists([[(2.0, 2.0), (2.0 + 2 * rc + 1, 17.0)]], [[[1, 0], [0, 1]]])
        assert_projective(D, x[:1], sig, far)              # objects more than 2 rc apart: one pass == composition
        caught = []
        for name, check in (("R - 1", lambda: assert_pixel_local(D, x, 1.0, radius=R - 1, cond=cond, generator=g)),
                            ("rc - 1", lambda: assert_conditionally_local(D, x, 1.0, cond, radius=rc - 1))):
            try:
                check()
            except AssertionError:
                caught.append(name)
    assert caught == ["R - 1", "rc - 1"], caught
    summary["locality"] = {"receptive_radius": R, "conditioner_radius": rc, "tighter_radii_caught": caught}
    print(f"locality verified at sigma {sig}: pixel-local within R = {R}, conditionally local within rc = {rc}, "
          f"one pass == projective composition for objects > 2 rc = {2 * rc} px apart; "
          f"radii R - 1 and rc - 1 are rejected")

    # 3. Compose: 6 objects on a 32x32 canvas (trained on 1-2 objects at 16x16).
    size = 32
    pts = [(5.0, 5.0), (5.0, 16.0), (6.0, 27.0), (26.0, 5.0), (25.0, 16.0), (26.0, 26.0)]
    colours = [0, 1, 0, 1, 0, 1]
    layout = Conditions.from_lists([pts], [[[1.0 - c, float(c)] for c in colours]])
    cond6 = layout.repeat_interleave(n_samples)
    composed = projective_from(D, cond6)
    sigmas = karras_sigmas(sample_steps, D.sigma_min, D.sigma_max)
    x = sigmas[0] * torch.randn(n_samples, 3, size, size, generator=g)
    plan = composed.plan(x, 1.0)
    crop = min(2 * (rc + R) + 1, size)                     # an object's effect box (+- rc) dilated by R
    share = crop**2 / size**2
    small_plan = projective_from(D, cond).plan(torch.zeros(2, 3, 20, 20), 1.0)   # 20x20: a crop is most of it
    with torch.no_grad():
        xs = torch.randn(2, 3, size, size, generator=g)
        c2 = layout.repeat_interleave(2)
        gap = float((projective_from(D, c2).evaluate(xs, 1.0, strategy="crop")
                     - projective_from(D, c2).evaluate(xs, 1.0, strategy="sequential")).abs().max())
    summary["plan"] = {"32x32, 6 objects": plan, "20x20": small_plan, "crop_share": round(share, 3),
                       "crop_vs_sequential_max_abs_diff": gap}
    print(f"composed.plan(x, sigma) = {plan!r}: the network declares R and rc and is translation equivariant, so "
          f"each object's pass can run on a crop of at most {crop}x{crop} px ({share:.0%} of a {size}x{size} pass, "
          f"<= 50%: cheaper); exact: max |crop - sequential| = {gap:.1e}. On 20x20 images the crops would cover "
          f"most of the image and plan() says {small_plan!r} (on the CPU; 'batched' on a GPU)")

    # 4. Sample.
    with torch.no_grad():
        samples = sample_heun(composed, x, sigmas).clamp(-1, 1)
    hits, far_dev = [], torch.ones(n_samples, size, size, dtype=torch.bool)
    for (r, c), col in zip(pts, colours):
        patch = samples[:, :, int(r) - 1:int(r) + 2, int(c) - 1:int(c) + 2].mean((2, 3))       # [N, 3]
        dist = torch.cdist(patch, torch.cat([COLOURS, torch.full((1, 3), BACKGROUND)]))        # [N, 3]
        hits.append(dist.argmin(1) == col)
        far_dev[:, max(0, int(r) - 4):int(r) + 5, max(0, int(c) - 4):int(c) + 5] = False
    right_colour = float(torch.stack(hits).float().mean())
    far_pixels = samples.permute(0, 2, 3, 1)[far_dev]                                          # [P, 3]
    background_like = float(((far_pixels - BACKGROUND).abs().amax(1) < 0.4).float().mean())
    summary["samples"] = {"n": n_samples, "objects": len(pts), "steps": sample_steps, "sampler": "heun",
                          "requested_objects_in_the_right_colour": right_colour,
                          "far_pixels_background_like": background_like,
                          "mean": float(samples.mean()), "std": float(samples.std())}
    print(f"sampled {n_samples} images with {len(pts)} objects (Heun, {sample_steps} steps): "
          f"{right_colour:.0%} of requested objects drawn in their colour, {background_like:.0%} of the pixels "
          f"far from every object look like background (mean {float(samples.mean()):.2f}, "
          f"std {float(samples.std()):.2f})")

    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None
    if plt is not None:
        n = min(n_samples, 8)
        fig, axes = plt.subplots(1, n, figsize=(1.6 * n, 1.8))
        for i, ax in enumerate(axes):
            ax.imshow(((samples[i].permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy())
            ax.scatter([p[1] for p in pts], [p[0] for p in pts], marker="+", s=18, c="white", linewidths=0.6)
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(out / "samples.png", dpi=110)
        plt.close(fig)
    print(f"wrote {out / 'summary.json'} in {summary['seconds']} s")


if __name__ == "__main__":
    main()
