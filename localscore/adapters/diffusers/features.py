r"""Feature hooks and feature-space tests: named blocks, recorded outputs, feature maps as functions of
``(x, sigma, cond)``, the feature-orthogonality test of concepts, the math attention kernel for
forward-mode derivatives, and a VAE decoder to measure in pixels."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from ..._checks import as_sigma, check_image
from ..._errors import describe, fail
from ..._moved import moved_getattr
from ...conditions import ConditionSet
from ...denoisers import Denoiser
from .prompts import PromptConditions, _check_prompt
from .regional import _level_size

if TYPE_CHECKING:
    from ...metrics import FeatureOrthogonality

__all__ = ["FeatureMap", "FeatureRecorder", "concept_feature_means", "concept_orthogonality", "list_blocks",
           "vae_decoder"]


def list_blocks(model: nn.Module, *, max_depth: int = 2, types: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """Names and class names of a model's blocks, to choose where to record features.

    Args:
        model: any ``nn.Module`` (for a diffusers UNet: ``down_blocks.0``, ``mid_block``,
            ``up_blocks.1.attentions.0``, ...).
        max_depth: the deepest name to list, counted in dots (``mid_block`` is 0,
            ``down_blocks.0`` is 1); module lists themselves are skipped.
        types: only blocks whose class name is one of these (e.g. ``["Transformer2DModel"]``), at any depth.

    Returns:
        ``[(name, class name), ...]`` in module order.

    Examples:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Sequential(torch.nn.ReLU()))
        >>> list_blocks(net)
        [('0', 'Conv2d'), ('1', 'Sequential'), ('1.0', 'ReLU')]
    """
    if not isinstance(model, nn.Module):
        raise fail("list_blocks", f"argument `model` is {describe(model)}, expected a torch.nn.Module.")
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 0:
        raise fail("list_blocks", f"`max_depth` is {describe(max_depth)}, expected an int >= 0 (dots in a block name).")
    if types is not None and (isinstance(types, (str, bytes)) or not isinstance(types, Sequence)
                              or not all(isinstance(t, str) for t in types)):
        raise fail("list_blocks", f"`types` is {describe(types)}, expected None or a list of class names.",
                   'e.g. types=["Transformer2DModel"].')
    out = []
    for name, m in model.named_modules():
        if not name or isinstance(m, (nn.ModuleList, nn.ModuleDict)):
            continue
        cls = type(m).__name__
        if types is not None:
            if cls in types:
                out.append((name, cls))
        elif name.count(".") <= max_depth:
            out.append((name, cls))
    return out


def _first_tensor(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out:
        return _first_tensor(out[0])
    sample = getattr(out, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    return out


class FeatureRecorder:
    """Forward hooks that record the outputs of named blocks (a context manager).

    ``recorder.features[name]`` is the block's output of the last forward pass: the tensor itself, the
    first element of a tuple (diffusers down blocks return ``(hidden_states, residuals)``), or
    ``.sample`` of an output object. Outputs are kept in the autograd graph (``detach=False``), so
    gradients and forward-mode derivatives flow through them.

    Args:
        model: the module whose submodules to hook.
        names: submodule names (see :func:`list_blocks`).
        detach: store ``output.detach()`` instead.

    Examples:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU())
        >>> with FeatureRecorder(net, ["0"]) as rec:
        ...     _ = net(torch.zeros(1, 1, 5, 5))
        >>> rec.features["0"].shape
        torch.Size([1, 2, 5, 5])
    """

    def __init__(self, model: nn.Module, names: Sequence[str], *, detach: bool = False) -> None:
        where = "FeatureRecorder"
        if not isinstance(model, nn.Module):
            raise fail(where, f"argument `model` is {describe(model)}, expected a torch.nn.Module.")
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, Sequence) or not names or not all(isinstance(n, str) for n in names):
            raise fail(where, f"`names` is {describe(names)}, expected a block name or a non-empty list of them.",
                       "list the names with `localscore.adapters.diffusers.list_blocks(model)`.")
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules or not n]
        if missing:
            close = [n for n in modules if n and missing[0].split(".")[0] in n][:6]
            raise fail(where, f"no block named {missing[0]!r} in {type(model).__name__}; expected a name from "
                       f"list_blocks(model){' such as ' + ', '.join(close) if close else ''}.",
                       "list the names with `localscore.adapters.diffusers.list_blocks(model)`.")
        self.model = model
        self.names = list(names)
        self.detach = detach
        self.features: dict[str, Tensor] = {}
        self._handles: list[Any] = []
        self._modules = modules

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            out = _first_tensor(output)
            if isinstance(out, torch.Tensor):
                self.features[name] = out.detach() if self.detach else out
        return hook

    def __enter__(self) -> FeatureRecorder:
        if self._handles:
            raise fail("FeatureRecorder", "this recorder is already active.")
        self.features = {}
        self._handles = [self._modules[n].register_forward_hook(self._hook(n)) for n in self.names]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


class FeatureMap(nn.Module):
    """The features of one block as a function ``F(x, sigma, cond) -> [B, C', h, w]``.

    One forward pass of ``denoiser(x, sigma, cond)`` with a hook on ``model``'s block ``name``; the
    recorded output is returned (in the graph, so :func:`gradient_influence` works on it). Spatial
    sequences ``[B, h * w, C']`` (transformer blocks) are reshaped to ``[B, C', h, w]`` using ``x``'s
    aspect ratio.

    Args:
        denoiser: the denoiser whose forward pass runs ``model`` (e.g. a :class:`DiffusersDenoiser`).
        model: the module holding the block (e.g. ``denoiser.model``).
        name: the block's name (see :func:`list_blocks`).
    """

    def __init__(self, denoiser: Denoiser, model: nn.Module, name: str) -> None:
        super().__init__()
        if not callable(denoiser):
            raise fail("FeatureMap", f"`denoiser` is {describe(denoiser)}, expected a callable D(x, sigma, cond).")
        FeatureRecorder(model, [name])  # validates the name
        self.inner = denoiser
        self.model = model
        self.name = name

    def forward(self, x: Tensor, sigma: Tensor | float, cond: ConditionSet | None = None) -> Tensor:
        s = sigma  # a number becomes [B], as the protocol has it; the denoiser checks x and sigma
        if isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and isinstance(x, torch.Tensor):
            s = torch.full((x.shape[0],), float(sigma), dtype=x.dtype, device=x.device)
        with FeatureRecorder(self.model, [self.name]) as rec:
            self.inner(x, cast(Tensor, s), cond)
        f = rec.features.get(self.name)
        if f is None:
            raise fail("FeatureMap", f"block {self.name!r} did not run (or returned no tensor) during the "
                       "forward pass.",
                       "pick a block on the path of this model's forward pass.")
        if f.dim() == 3:  # [B, L, C'] token sequence over the latent grid
            H, W = x.shape[-2:]
            h, w = _level_size(H, W, f.shape[1], "FeatureMap")
            f = f.transpose(1, 2).reshape(f.shape[0], f.shape[2], h, w)
        if f.dim() != 4:
            raise fail("FeatureMap", f"block {self.name!r} returned shape {tuple(f.shape)}, expected a feature map "
                       "[B, C', h, w].", "pick a spatial block (a down/mid/up block, a resnet, a transformer).")
        return f


def concept_feature_means(
    fn: Callable[..., Tensor],
    x: Tensor,
    sigma: Tensor | float,
    prompts: Sequence[PromptConditions],
    background: PromptConditions,
) -> tuple[Tensor, Tensor]:
    r"""Mean features of a batch under each conditioning, for the feature-orthogonality test.

    ``mu_k = mean_b fn(x, sigma, prompts[k])[b]`` and ``mu_none = mean_b fn(x, sigma, background)[b]``,
    flattened. The mean differences ``d_k = mu_k - mu_none`` of concepts that compose projectively in
    feature space are mutually orthogonal (a necessary condition); pass the result to
    :func:`localscore.metrics.feature_orthogonality` for the cosine matrix of the ``d_k``.

    Args:
        fn: ``fn(x, sigma, cond) -> [B, ...]``, e.g. a :class:`FeatureMap`.
        x: ``[B, C, H, W]`` the batch (noisy latents: average over images and noise draws).
        sigma: ``[B]`` or a float.
        prompts: ``K`` conditionings (e.g. "in the style of X" and "a photo of Y"), each of batch 1 or B.
        background: the reference conditioning (e.g. the empty prompt, or ``prompt.drop_all()``).

    Returns:
        ``(means [K, F], mean_background [F])`` with ``F`` the number of features.

    Examples:
        >>> import torch
        >>> fn = lambda x, s, p: x + p.effective_embeds()[:, :1, :, None]       # shifts channel-wise
        >>> e = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])                          # tokens 0 and 1
        >>> p = PromptConditions(e, [[0], [1]])
        >>> means, bg = concept_feature_means(fn, torch.zeros(3, 1, 2, 1), 1.0, p.singletons(), p.drop_all())
        >>> (means - bg).tolist()
        [[1.0, 0.0], [0.0, 0.0]]
    """
    where = "concept_feature_means"
    if not callable(fn):
        raise fail(where, f"argument `fn` is {describe(fn)}, expected a callable fn(x, sigma, cond).")
    x = check_image(x, where)
    s = as_sigma(sigma, x.shape[0], where, like=x)
    if isinstance(prompts, PromptConditions) or not isinstance(prompts, Sequence) or not prompts:
        raise fail(where, f"argument `prompts` is {describe(prompts)}, expected a non-empty list of PromptConditions.",
                   "for one prompt's concepts pass `prompt.singletons()`.")
    means = []
    for k, p in enumerate([*prompts, background]):
        name = f"prompts[{k}]" if k < len(prompts) else "background"
        p = _check_prompt(p, where, name).for_batch(x.shape[0], where)
        out = fn(x, s, p)
        if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[0] != x.shape[0]:
            raise fail(where, f"`fn` returned {describe(out)} for {name}, expected a tensor [B = {x.shape[0]}, ...].")
        if out.device.type != "meta" and not bool(torch.isfinite(out).all()):
            raise fail(where, f"`fn` returned NaN or infinite features for {name}.",
                       "check the model's output at this sigma (a float16 overflow, a diverged input).")
        means.append(out.reshape(out.shape[0], -1).mean(0))
    return torch.stack(means[:-1]), means[-1]


def concept_orthogonality(
    fn: Callable[..., Tensor],
    x: Tensor,
    sigma: Tensor | float,
    prompts: Sequence[PromptConditions],
    background: PromptConditions,
    *,
    labels: Sequence[str] | None = None,
) -> FeatureOrthogonality:
    r"""The feature-orthogonality test for concepts: the cosine matrix of mean feature differences.

    :func:`concept_feature_means` followed by :func:`localscore.metrics.feature_orthogonality`:
    ``d_k = mu_k - mu_none`` and ``cosine[j, k] = <d_j, d_k> / (|d_j| |d_k|)``. Near-zero off-diagonal
    entries (e.g. between a style and a content concept) are the necessary condition for their
    projective composition in that feature space.

    Returns:
        :class:`localscore.metrics.FeatureOrthogonality` (``cosine [K, K]``, ``norms [K]``,
        ``max_abs_offdiag``).
    """
    from ...metrics import feature_orthogonality

    means, bg = concept_feature_means(fn, x, sigma, prompts, background)
    return feature_orthogonality(means, bg, labels=labels)

def vae_decoder(vae: Any, *, scaling_factor: float | None = None, shift_factor: float | None = None
                ) -> Callable[[Tensor], Tensor]:
    r"""A callable ``latents [B, 4, h, w] -> images [B, 3, H, W]`` from a diffusers ``AutoencoderKL``.

    ``images = vae.decode(latents / scaling_factor + shift_factor).sample``, with the factors from
    ``vae.config`` unless given (Stable Diffusion 1.x: 0.18215; SDXL: 0.13025). Use it as the
    ``decoder`` of :func:`ablation_influence` / :func:`gradient_influence` to see influence in pixels.
    """
    where = "vae_decoder"
    if not hasattr(vae, "decode"):
        raise fail(where, f"argument `vae` is {describe(vae)}, expected a diffusers autoencoder with `.decode`.",
                   "pass `pipe.vae`, or any callable latents -> images as the decoder itself.")
    config = getattr(vae, "config", {})
    sf = scaling_factor if scaling_factor is not None else float(getattr(config, "scaling_factor", 1.0) or 1.0)
    sh = shift_factor if shift_factor is not None else float(getattr(config, "shift_factor", 0.0) or 0.0)

    def decode(latents: Tensor) -> Tensor:
        dtype = next(iter(vae.parameters())).dtype if isinstance(vae, nn.Module) else latents.dtype
        out = vae.decode((latents / sf + sh).to(dtype), return_dict=False)[0]
        return cast(Tensor, out).to(latents.dtype)

    return decode


# 0.1.0 re-export of localscore.metrics.math_attention (two names for one thing); it warns until 0.3.
__getattr__ = moved_getattr(__name__, {"math_attention": "localscore.metrics.math_attention"})
