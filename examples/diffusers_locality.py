"""Locality analysis of a diffusers text-to-image model: pixel locality, conditional locality of concepts
(in latents, in features and in pixels), the feature-orthogonality test, and regional attention as an
intervention, with projective composition of the concepts.

Quick mode (CI) runs everything on a tiny *randomly initialised* UNet with random token embeddings in
place of a text encoder; its numbers exercise the pipeline, they say nothing about real models:

    python examples/diffusers_locality.py --quick --out out/diffusers_locality

On a locally available checkpoint (only ``from_pretrained(path)`` is called: no download code; needs
``pip install diffusers transformers``, and a GPU for SDXL):

    python examples/diffusers_locality.py --model /path/to/stable-diffusion-xl-base-1.0 \\
        --prompt "a red hat next to a blue car" --concept "red hat" --concept "blue car" --out out/sdxl

Each ``--concept`` is a token group (a conditioner); ``--region`` gives each concept's box as
``top,left,bottom,right`` in fractions of the image (default: the left and right halves), used by the
locality index and by regional attention. Outputs in ``--out``: ``results.json`` (every number) and
figures (``influence_*.png``, ``pixel_locality.png``, ``orthogonality.png``, ``samples.png``). The
docs page ``docs/diffusers.md`` explains how to read them. The script exits with status 1 if the diffusers
scheduler and localscore's Euler sampler, run on the same composition and grid, disagree beyond round-off.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from localscore import bind
from localscore.adapters.diffusers import (
    DiffusersDenoiser,
    FeatureMap,
    PromptConditions,
    concept_composition,
    concept_locality,
    concept_orthogonality,
    regional_attention,
    sample_with_scheduler,
    scheduler_sigmas,
    scheduler_start,
    vae_decoder,
    ve_to_vp,
)
from localscore.metrics import ablation_influence, gradient_influence, math_attention, pixel_locality


# ---------------------------------------------------------------------------------------------- models
def tiny_setup(device: torch.device) -> dict[str, Any]:
    """A random UNet, VAE and 'text embeddings' with two concepts (tokens 2-3 and 5), no download."""
    import diffusers

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, norm_num_groups=8, attention_head_dim=4,
    ).to(device).eval()
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=4, sample_size=32,
    ).to(device).eval()
    sched = diffusers.DDIMScheduler(clip_sample=False)
    T, Dm = 8, 16
    embeds = torch.randn(1, T, Dm, device=device)
    null = torch.randn(1, T, Dm, device=device) * 0.1
    prompt = PromptConditions(embeds, [[2, 3], [5]], null_embeds=null)
    return dict(unet=unet, vae=vae, scheduler=sched, prompt=prompt, labels=["concept A", "concept B"],
                latent=(16, 16), block="up_blocks.1", exact=True)


def pipeline_setup(path: str, text: str, concepts: list[str], device: torch.device) -> dict[str, Any]:
    """Stable Diffusion (1.x / 2.x) or SDXL from a local folder: embeddings, token groups, added conditions."""
    import diffusers

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    pipe = diffusers.DiffusionPipeline.from_pretrained(path, torch_dtype=dtype).to(device)
    is_xl = getattr(pipe, "text_encoder_2", None) is not None

    def encode(s: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = pipe.encode_prompt(s, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False)
        return out[0].float(), (out[2].float() if is_xl else None)

    embeds, pooled = encode(text)
    null, _ = encode("")
    tok = pipe.tokenizer
    ids = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
    groups = []
    for c in concepts:
        sub = tok(c, add_special_tokens=False).input_ids
        hit = [i for i in range(len(ids) - len(sub) + 1) if ids[i:i + len(sub)] == sub]
        if not hit:
            raise SystemExit(f"concept {c!r} is not a token subsequence of the prompt {text!r}")
        groups.append(list(range(hit[0], hit[0] + len(sub))))
    added = None
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    if is_xl:
        time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32, device=device)
        added = {"text_embeds": pooled, "time_ids": time_ids}
    prompt = PromptConditions(embeds, groups, null_embeds=null, added_cond_kwargs=added)
    vae = pipe.vae.to(torch.float32)            # decode in float32 (the SDXL VAE overflows in float16)
    s = pipe.unet.config.sample_size
    return dict(unet=pipe.unet, vae=vae, scheduler=pipe.scheduler, prompt=prompt, labels=concepts,
                latent=(s, s), block="up_blocks.1", exact=False)


def box_regions(boxes: list[list[float]], size: tuple[int, int], device: torch.device) -> torch.Tensor:
    H, W = size
    r = torch.zeros(1, len(boxes), H, W, dtype=torch.bool, device=device)
    for g, (t, l, b, rr) in enumerate(boxes):
        r[0, g, round(t * H):round(b * H), round(l * W):round(rr * W)] = True
    return r


# ---------------------------------------------------------------------------------------------- analysis
def influence_figure(path: Path, maps: dict[str, torch.Tensor], labels: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(maps)
    G = len(labels)
    fig, axes = plt.subplots(len(rows), G, figsize=(2.6 * G, 2.4 * len(rows)), squeeze=False)
    for i, name in enumerate(rows):
        for g in range(G):
            m = maps[name][0, g].float().cpu()
            ax = axes[i, g]
            ax.imshow((m / m.max().clamp_min(1e-30)).numpy(), cmap="magma", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(labels[g], fontsize=9)
            if g == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    try:
        import diffusers  # noqa: F401
    except ImportError:
        raise SystemExit("this example needs diffusers: pip install 'localscore[diffusers]' "
                         "(and transformers for a real checkpoint)") from None
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny random model, few steps (CI)")
    ap.add_argument("--out", default="out/diffusers_locality", help="output directory")
    ap.add_argument("--model", default=None, help="local diffusers pipeline folder (SD 1.x/2.x or SDXL)")
    ap.add_argument("--prompt", default="a red hat next to a blue car")
    ap.add_argument("--concept", action="append", default=None, help="a token group (repeat the flag)")
    ap.add_argument("--region", action="append", default=None, help="top,left,bottom,right in [0, 1] per concept")
    ap.add_argument("--block", default=None, help="feature block (see list_blocks); default up_blocks.1")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps")
    ap.add_argument("--probes", type=int, default=8, help="random probes of gradient influence (real models)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t_start = time.time()

    if args.model is None:
        setup = tiny_setup(device)
    else:
        setup = pipeline_setup(args.model, args.prompt, args.concept or ["red hat", "blue car"], device)
    prompt: PromptConditions = setup["prompt"]
    labels: list[str] = setup["labels"]
    G = prompt.num_groups
    boxes = [[float(v) for v in r.split(",")] for r in args.region] if args.region else \
        [[0.0, g / G, 1.0, (g + 1) / G] for g in range(G)]
    regions = box_regions(boxes, setup["latent"], device)
    prompt = prompt.with_regions(regions)
    unet, sched = setup["unet"], setup["scheduler"]
    D = DiffusersDenoiser(unet, sched)
    block = args.block or setup["block"]
    features = FeatureMap(D, unet, block)
    decode = vae_decoder(setup["vae"])
    steps = args.steps or (4 if args.quick else 30)
    # exact Jacobian norms on the tiny model (outside quick mode); random probes on real models
    probes: Any = "exact" if setup["exact"] and not args.quick else (4 if args.quick else args.probes)
    dense = setup["exact"] and not args.quick
    gen = torch.Generator(device=device).manual_seed(args.seed)
    results: dict[str, Any] = {"model": args.model or "tiny random UNet (quick demo)", "concepts": labels,
                               "regions": boxes, "feature_block": block, "steps": steps}

    # 1. a clean sample (with regional attention), then noisy versions of it at a few noise levels
    H, W = setup["latent"]
    latents0 = torch.randn(1, 4, H, W, generator=gen, device=device) * sched.init_noise_sigma
    with torch.no_grad(), regional_attention(unet):
        x0 = sample_with_scheduler(D, sched, latents0, prompt, num_inference_steps=steps)
    sigmas = [0.5, 2.0, 8.0] if not args.quick else [1.0, 8.0]
    results["levels"] = []
    for s in sigmas:
        eps = torch.randn(x0.shape, generator=gen, device=device)
        x = x0 + s * eps
        level: dict[str, Any] = {"sigma": s}
        # 2. spatial locality of the score in latent space (dense Jacobian, or exact rows at random pixels);
        #    forward-mode derivatives need the math kernel of scaled-dot-product attention
        with math_attention():
            pl = pixel_locality(bind(D, prompt.with_regions(None)), x, s, target="score",
                                method="dense" if dense else "probes", n_rows=16, generator=gen)
        level["pixel_locality"] = {"radius50": int(pl.radius(0.5)[0]), "radius90": int(pl.radius(0.9)[0]),
                                   "outside_r2": float(pl.outside(2)[0])}
        if s == sigmas[-1]:
            pl.plot(out / "pixel_locality.png")
        # 3. conditional locality of the concepts, without and with the intervention
        maps: dict[str, torch.Tensor] = {}
        for mode in ("plain", "regional"):
            p = prompt if mode == "regional" else prompt.with_regions(None)
            ctx = regional_attention(unet) if mode == "regional" else _null()
            with torch.no_grad(), ctx:
                lat_abl = ablation_influence(D, x, s, p)
                lat_grad = gradient_influence(D, x, s, p, probes=probes, generator=gen)
                feat_abl = ablation_influence(features, x, s, p)
                pix_abl = ablation_influence(D, x, s, p, decoder=decode) if s == sigmas[-1] else None
            level[mode] = {
                "latent_ablation": _loc(concept_locality(lat_abl, p, regions=regions)),
                "latent_gradient": _loc(concept_locality(lat_grad, p, regions=regions)),
                f"features_{block}_ablation": _loc(concept_locality(feat_abl, p, regions=regions)),
            }
            maps[f"{mode}: latent ablation"] = lat_abl
            maps[f"{mode}: latent gradient"] = lat_grad
            maps[f"{mode}: {block}"] = feat_abl
            if pix_abl is not None:
                level[mode]["pixels_ablation"] = _loc(concept_locality(pix_abl, p, regions=regions))
                maps[f"{mode}: pixels (VAE)"] = pix_abl
        influence_figure(out / f"influence_sigma{s:g}.png", maps, labels)
        # 4. feature orthogonality of the concepts (mean differences over noise draws at this level)
        xs = x0 + s * torch.randn((4 if args.quick else 16, *x0.shape[1:]), generator=gen, device=device)
        with torch.no_grad():
            orth = concept_orthogonality(features, xs, s, prompt.with_regions(None).singletons(),
                                         prompt.with_regions(None).drop_all(), labels=labels)
        level["orthogonality"] = {"cosine": orth.cosine.tolist(), "max_abs_offdiag": orth.max_abs_offdiag}
        if s == sigmas[-1]:
            orth.plot(out / "orthogonality.png")
        # 5. composition residual: how far one pass with every concept is from the projective composition
        with torch.no_grad(), regional_attention(unet):
            joint = D(x, s, prompt)
            bg = D(x, s, prompt.drop_all())
            comp = concept_composition(D, prompt, strategy="sequential")(x, s)
        level["composition_residual"] = float((joint - comp).norm() / (joint - bg).norm().clamp_min(1e-30))
        results["levels"].append(level)
        print(f"sigma {s:g}: pixel radius90 {level['pixel_locality']['radius90']}, "
              f"latent ablation index plain {level['plain']['latent_ablation']['index']:.3f} -> regional "
              f"{level['regional']['latent_ablation']['index']:.3f}, feature cos max "
              f"{level['orthogonality']['max_abs_offdiag']:.3f}, residual {level['composition_residual']:.3f}")

    # 6. samples: one pass with the prompt vs projective composition of the concepts (regional attention)
    with torch.no_grad(), regional_attention(unet):
        comp = concept_composition(D, prompt, strategy="sequential")
        x_comp = sample_with_scheduler(comp, sched, latents0, num_inference_steps=steps)
        from localscore.sampling import sample_euler

        x_euler = sample_euler(comp, *scheduler_start(sched, latents0, steps))
        if float(scheduler_sigmas(sched, steps)[-1]) > 0:   # DDIM without set_alpha_to_one ends above 0
            x_euler = ve_to_vp(x_euler, float(scheduler_sigmas(sched, steps)[-1]))
        imgs = [decode(v) for v in (x0, x_comp, x_euler)]
    results["scheduler_vs_localscore_sampler_max_abs"] = float((x_comp - x_euler).abs().max())
    results["composed_sample_max_abs"] = float(x_comp.abs().max())
    # localscore's Euler equals DDIM (eta = 0) and diffusers' Euler scheduler on the same grid
    _save_samples(out / "samples.png", imgs, ["one pass (regional)", "composition, diffusers scheduler",
                                              "composition, localscore Euler"])
    results["seconds"] = round(time.time() - t_start, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out / 'results.json'} and figures in {results['seconds']} s")
    # the one claim here that holds for any model: the diffusers scheduler and localscore's Euler integrate
    # the same ODE on the same grid (round-off apart: relative 1e-4 in float32, 1e-2 in half precision)
    rtol = 1e-4 if next(unet.parameters()).dtype == torch.float32 else 1e-2
    if results["scheduler_vs_localscore_sampler_max_abs"] > rtol * (1.0 + float(x_comp.abs().max())):
        print("FAILED: the diffusers scheduler and localscore's Euler sampler disagree by "
              f"{results['scheduler_vs_localscore_sampler_max_abs']:.2e}")
        raise SystemExit(1)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _loc(res: Any) -> dict[str, Any]:
    inside = [None if math.isnan(v) else round(v, 4) for v in res.inside[0].tolist()]
    others = [None if math.isnan(v) else round(v, 4) for v in res.on_others[0].tolist()]
    return {"index": res.index, "inside": inside, "on_others": others}


def _save_samples(path: Path, imgs: list[torch.Tensor], titles: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(imgs), figsize=(3 * len(imgs), 3.2))
    for ax, im, t in zip(axes, imgs, titles):
        a = ((im[0].float().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
        ax.imshow(a)
        ax.set_title(t, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
