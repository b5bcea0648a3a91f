"""Typed result objects of the metrics: ``.to_dict()`` (JSON-serialisable) and ``.plot()`` (matplotlib).

Their reprs summarise each tensor (shape, dtype, device, largest ``|value|`` and where) instead of printing
it; ``to_dict()`` has the values.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from .._errors import fail
from .._repr import summary_repr

__all__ = ["ConditionalLocality", "FeatureOrthogonality", "LocalityIndex", "PixelLocality"]


def _plain(value: Any) -> Any:
    """Tensors to (nested) lists with NaN as None, tuples to lists, dicts recursively."""
    if isinstance(value, Tensor):
        v = value.detach().cpu()
        if v.is_floating_point():
            out = v.double().tolist()
            return _nan_to_none(out)
        return v.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise fail("plot", "matplotlib is not installed, and plotting needs it.",
                   "install the plot extra: `pip install 'localscore[plot]'` (or `pip install matplotlib`).") from exc
    return plt


def _save(fig: Any, path: str | os.PathLike[str] | None) -> None:
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")


class _Result:
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict: tensors become nested lists (NaN becomes ``None``)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]


@summary_repr
@dataclass(frozen=True)
class PixelLocality(_Result):
    r"""How the Jacobian mass of a model spreads over input pixels, per noise level.

    For output pixel ``i`` let ``m_i(o) = sum_{c', c} J[c', i, c, i + o]^2`` (squared Frobenius mass of the
    input pixel at offset ``o``) and ``n_i(o) = m_i(o) / sum_o m_i(o)``. Then

    * ``heatmap[s, H - 1 + o_r, W - 1 + o_c] = mean_{b, i} n_i(o)`` (offsets ``o = (o_r, o_c)``; pixels with
      zero mass are left out of the mean),
    * ``profile[s, d] = sum_{o: dist(o) <= d} heatmap[s, o]``: the average share of mass within distance
      ``d`` (``metric`` says which distance),
    * ``effective_radius[s, q] = min{d : profile[s, d] >= quantiles[q]}``.

    Attributes:
        sigmas: ``[S]`` the noise levels (the first value when a ``[B]`` tensor was given).
        distances: ``[D + 1]`` the integer distances ``0 .. D`` of the profile.
        profile: ``[S, D + 1]`` mass fraction within each distance.
        quantiles: the quantiles of ``effective_radius``.
        effective_radius: ``[S, Q]`` long.
        heatmap: ``[S, 2H - 1, 2W - 1]``, centred at ``(H - 1, W - 1)``; sums to 1.
        metric: ``"chebyshev"`` or ``"euclidean"``.
        method: how the Jacobian was obtained (``"dense"``, ``"colored"`` or ``"probes"``).
        target: ``"denoiser"`` or ``"score"``.
    """

    sigmas: Tensor
    distances: Tensor
    profile: Tensor
    quantiles: tuple[float, ...]
    effective_radius: Tensor
    heatmap: Tensor
    metric: str
    method: str
    target: str

    def radius(self, quantile: float = 0.9) -> Tensor:
        """``[S]`` long: the smallest distance holding ``quantile`` of the mass, per noise level."""
        hit = self.profile >= quantile - 1e-12
        return torch.where(hit.any(1), hit.float().argmax(1), torch.full_like(hit[:, 0], len(self.distances) - 1,
                                                                              dtype=torch.long))

    def outside(self, radius: int) -> Tensor:
        """``[S]``: the share of Jacobian mass farther than ``radius`` (``1 - profile[:, radius]``)."""
        r = min(int(radius), len(self.distances) - 1)
        return 1.0 - self.profile[:, r]

    def plot(self, path: str | os.PathLike[str] | None = None, *, max_offset: int | None = None) -> Any:
        """Plot the profiles (one curve per sigma) and the heat-maps (log scale); return the figure.

        Args:
            path: save the figure there when given.
            max_offset: crop the heat-maps to offsets ``|o| <= max_offset`` (default: the largest
                99 % effective radius plus 2).
        """
        plt = _pyplot()
        S = len(self.sigmas)
        fig, axes = plt.subplots(1, S + 1, figsize=(4 * (S + 1), 3.6), squeeze=False)
        ax = axes[0, 0]
        for s in range(S):
            ax.plot(self.distances.numpy(), self.profile[s].numpy(), marker=".",
                    label=f"σ = {float(self.sigmas[s]):.3g}")
        ax.set_xlabel(f"distance d ({self.metric}, pixels)")
        ax.set_ylabel("Jacobian mass within d")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        Hc, Wc = self.heatmap.shape[1:]
        cr, cc = Hc // 2, Wc // 2
        m = max_offset if max_offset is not None else int(self.radius(0.99).max()) + 2
        m = max(1, min(m, cr, cc) if min(cr, cc) > 0 else 1)
        for s in range(S):
            a = axes[0, s + 1]
            crop = self.heatmap[s, max(cr - m, 0) : cr + m + 1, max(cc - m, 0) : cc + m + 1]
            img = torch.log10(crop.clamp_min(1e-12)).numpy()
            h = a.imshow(img, extent=(-m - 0.5, m + 0.5, m + 0.5, -m - 0.5), cmap="magma", vmin=max(img.min(), -8))
            a.set_title(f"log10 mean |J|² by offset, σ = {float(self.sigmas[s]):.3g}", fontsize=9)
            a.set_xlabel("column offset")
            a.set_ylabel("row offset")
            fig.colorbar(h, ax=a, fraction=0.046)
        fig.tight_layout()
        _save(fig, path)
        return fig


@summary_repr
@dataclass(frozen=True)
class LocalityIndex(_Result):
    r"""Where each conditioner's influence lands, relative to regions.

    With influence ``I[b, k] >= 0`` over pixels and region masks ``m[b, k]`` in ``[0, 1]``:

    * ``inside[b, k] = sum_i I[b, k, i] m[b, k, i] / sum_i I[b, k, i]``,
    * ``on_others[b, k] = sum_i I[b, k, i] u[b, k, i] / sum_i I[b, k, i]`` with
      ``u[b, k, i] = max_{k' != k, valid} m[b, k', i]`` (the union of the other objects' regions),
    * ``index = mean(inside[valid])``, ``on_others_mean = mean(on_others[valid])``.

    ``valid`` marks real conditioners with nonzero total influence; the others hold NaN (a defined value: a
    padding slot, or an object the model ignores, has no share to report). A set with no valid conditioner at
    all is refused by :func:`~localscore.metrics.locality_index` with a :class:`~localscore.LocalScoreError`.

    Attributes:
        inside: ``[B, K]``.
        on_others: ``[B, K]``.
        valid: ``[B, K]`` bool.
        total: ``[B, K]`` the total influence ``sum_i I[b, k, i]``.
        index: the conditional locality index (NaN when every conditioner has zero influence).
        on_others_mean: the mean share on other objects' regions.
    """

    inside: Tensor
    on_others: Tensor
    valid: Tensor
    total: Tensor
    index: float
    on_others_mean: float

    def plot(self, path: str | os.PathLike[str] | None = None) -> Any:
        """Bar chart of ``inside`` and ``on_others`` per conditioner of the first image; returns the figure."""
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(5, 3.2))
        K = self.inside.shape[1]
        ks = torch.arange(K).numpy()
        ax.bar(ks - 0.2, self.inside[0].nan_to_num(0).numpy(), width=0.4, label="inside own region")
        ax.bar(ks + 0.2, self.on_others[0].nan_to_num(0).numpy(), width=0.4, label="on other objects")
        ax.set_xlabel("conditioner")
        ax.set_ylabel("share of influence")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"index = {self.index:.3f}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        _save(fig, path)
        return fig


@summary_repr
@dataclass(frozen=True)
class ConditionalLocality(_Result):
    r"""Per-conditioner influence maps and the conditional locality index, per noise level and method.

    Keys of the dicts are the methods (``"ablation"``, ``"gradient"``).

    Attributes:
        sigmas: ``[S]``.
        positions: ``[B, K, 2]`` the conditioners' positions; ``valid``: ``[B, K]`` their validity.
        influence: method -> ``[S, B, K, H, W]`` influence maps (see
            :func:`~localscore.metrics.conditional_locality`).
        influence_radius: method -> ``[S, B, K]``: the smallest distance from the conditioner holding
            ``quantile`` of its influence (NaN for padding or zero influence).
        inside, on_others: method -> ``[S, B, K]`` shares (see :class:`LocalityIndex`).
        index, on_others_mean: method -> ``[S]``.
        quantile: the quantile of ``influence_radius``.
        regions: how the regions were chosen: ``"given"``, ``"radius=<r>"`` or ``"influence_radius"``.
        metric: the distance.
    """

    sigmas: Tensor
    positions: Tensor
    valid: Tensor
    influence: dict[str, Tensor]
    influence_radius: dict[str, Tensor]
    inside: dict[str, Tensor]
    on_others: dict[str, Tensor]
    index: dict[str, Tensor]
    on_others_mean: dict[str, Tensor]
    quantile: float
    regions: str
    metric: str

    def plot(self, path: str | os.PathLike[str] | None = None, *, image: int = 0) -> Any:
        """Influence maps (summed over conditioners, one row per method, one column per sigma) of one image,
        with the conditioners marked, and the index against sigma. Returns the figure."""
        plt = _pyplot()
        methods = list(self.influence)
        S = len(self.sigmas)
        fig, axes = plt.subplots(len(methods), S + 1, figsize=(3.4 * (S + 1), 3.2 * len(methods)), squeeze=False)
        pos = self.positions[image][self.valid[image]]
        for r, meth in enumerate(methods):
            for s in range(S):
                a = axes[r, s]
                maps = self.influence[meth][s, image]
                tot = maps.sum(dim=(1, 2), keepdim=True).clamp_min(1e-300)
                a.imshow((maps / tot).sum(0).numpy(), cmap="viridis")
                a.scatter(pos[:, 1].numpy(), pos[:, 0].numpy(), marker="x", c="red", s=30)
                a.set_title(f"{meth}, σ = {float(self.sigmas[s]):.3g}", fontsize=9)
                a.set_xticks([])
                a.set_yticks([])
            a = axes[r, S]
            a.semilogx(self.sigmas.numpy(), self.index[meth].numpy(), marker="o", label="inside own region")
            a.semilogx(self.sigmas.numpy(), self.on_others_mean[meth].numpy(), marker="s", label="on other objects")
            a.set_ylim(-0.02, 1.02)
            a.set_xlabel("σ")
            a.set_title(f"{meth}: conditional locality index", fontsize=9)
            a.grid(alpha=0.3)
            a.legend(fontsize=7)
        fig.tight_layout()
        _save(fig, path)
        return fig


@summary_repr
@dataclass(frozen=True)
class FeatureOrthogonality(_Result):
    r"""Geometry of mean differences ``d_j = mu_j - mu_none`` (pixel or feature space).

    Attributes:
        cosine: ``[J, J]`` with ``cosine[j, k] = <d_j, d_k> / (|d_j| |d_k|)`` (NaN where a norm is 0).
        norms: ``[J]`` the norms ``|d_j|``.
        max_abs_offdiag: ``max_{j != k} |cosine[j, k]|`` (0 for a single condition): 0 means orthogonal.
        labels: names of the conditions, if given.
    """

    cosine: Tensor
    norms: Tensor
    max_abs_offdiag: float
    labels: tuple[str, ...] | None = None

    def plot(self, path: str | os.PathLike[str] | None = None) -> Any:
        """Heat-map of the cosine matrix; returns the figure."""
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(4.2, 3.6))
        h = ax.imshow(self.cosine.numpy(), cmap="coolwarm", vmin=-1, vmax=1)
        J = self.cosine.shape[0]
        if self.labels:
            ax.set_xticks(range(J), self.labels, rotation=45, ha="right")
            ax.set_yticks(range(J), self.labels)
        ax.set_title(f"cos(d_j, d_k); max off-diagonal |cos| = {self.max_abs_offdiag:.3f}", fontsize=9)
        fig.colorbar(h, ax=ax, fraction=0.046)
        fig.tight_layout()
        _save(fig, path)
        return fig
