"""Cost of the diffusers tools, as ratios to one plain forward pass of the same model, measured side by side.

Rows: the wrapped denoiser; regional attention installed but unused (pass-through) and used (with the
bias); influence maps (``localscore.metrics``) by ablation (G + 1 sets in one batched pass) and by
gradient (exact: one forward-mode product per embedding coordinate of each concept; probes: n products
per concept). A tiny random UNet on the CPU
(no download); `--quick` shrinks it.

    python benchmarks/diffusers_influence.py [--quick] [--size 32] [--repeat 5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from localscore.adapters.diffusers import DiffusersDenoiser, PromptConditions, install_regional_attention
from localscore.metrics import ablation_influence, gradient_influence


def timeit(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    import diffusers

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--size", type=int, default=32, help="latent size")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    size = 16 if args.quick else args.size
    repeat = 2 if args.quick else args.repeat
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=size, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8,
    ).eval()
    sched = diffusers.DDIMScheduler()
    T, Dm = 16, 32
    prompt = PromptConditions(torch.randn(1, T, Dm), [[2, 3], [6]], null_embeds=torch.zeros(1, T, Dm))
    regions = torch.zeros(1, 2, size, size, dtype=torch.bool)
    regions[:, 0, :, : size // 2] = True
    regions[:, 1, :, size // 2:] = True
    D = DiffusersDenoiser(unet, sched)
    x = torch.randn(1, 4, size, size)
    ts = torch.tensor([500.0])
    rows: list[tuple[str, float]] = []
    with torch.no_grad():
        base = timeit(lambda: unet(x, ts, encoder_hidden_states=prompt.embeds).sample, repeat)
        rows.append(("raw UNet forward", base))
        rows.append(("DiffusersDenoiser", timeit(lambda: D(x, 1.0, prompt), repeat)))
        handle = install_regional_attention(unet)
        rows.append(("regional attention installed, no regions", timeit(lambda: D(x, 1.0, prompt), repeat)))
        pr = prompt.with_regions(regions)
        rows.append(("regional attention with regions", timeit(lambda: D(x, 1.0, pr), repeat)))
        handle.remove()
        rows.append(("ablation influence (G = 2, one call of batch 3)",
                     timeit(lambda: ablation_influence(D, x, 1.0, prompt), repeat)))
        n_exact = 3 * Dm
        rows.append((f"gradient influence, exact ({n_exact} JVPs)",
                     timeit(lambda: gradient_influence(D, x, 1.0, prompt), 1)))
        rows.append(("gradient influence, 8 probes per concept (16 JVPs)",
                     timeit(lambda: gradient_influence(D, x, 1.0, prompt, probes=8), 1)))
    print(f"tiny UNet, latents 4x{size}x{size}, {sum(p.numel() for p in unet.parameters())} parameters, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'what':55s} {'seconds':>9s} {'x forward':>10s}")
    for name, t in rows:
        print(f"{name:55s} {t:9.4f} {t / base:10.2f}")


if __name__ == "__main__":
    main()
