r"""Feature-space geometry of conditionals: the orthogonality of mean differences.

If an invertible feature map ``z = A(x)`` makes the conditionals factorize (conditional projective
composition in feature space), the mean differences ``d_j = E[A(x) | c_j] - E[A(x) | none]`` are mutually
orthogonal. :func:`feature_orthogonality` reports their cosine matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .._checks import check_finite, check_tensor
from .._errors import describe, fail
from .results import FeatureOrthogonality

__all__ = ["feature_orthogonality"]


def _as_list(value: Any, where: str) -> list[Tensor]:
    if isinstance(value, torch.Tensor):
        if value.dim() < 1 or value.shape[0] == 0:
            raise fail(where, f"`means_by_condition` has shape {tuple(value.shape)}, expected [J, ...] with J >= 1.")
        return list(value.unbind(0))
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0:
        return [check_tensor(v, where, f"means_by_condition[{j}]") for j, v in enumerate(value)]
    raise fail(where, f"`means_by_condition` is {describe(value)}, expected a tensor [J, ...] or a non-empty list "
               "of tensors.", "stack one mean (or one batch of samples, with samples=True) per condition.")


def feature_orthogonality(
    means_by_condition: Tensor | Sequence[Tensor],
    mean_background: Tensor,
    feature_fn: Callable[[Tensor], Tensor] | None = None,
    *,
    samples: bool = False,
    labels: Sequence[str] | None = None,
) -> FeatureOrthogonality:
    r"""The cosine matrix of the mean differences ``d_j = mu_j - mu_none``, in pixels or in features.

    With ``samples=False`` (default) the inputs are means and ``d_j = A(mu_j) - A(mu_none)`` (``A`` the
    identity when ``feature_fn`` is None; for a nonlinear ``A`` this differs from the mean of features,
    so pass samples then). With ``samples=True`` each input is a batch ``[N, ...]`` of samples and
    ``mu_j = mean_n A(x_n)``, ``d_j = mu_j - mu_none``. Finally
    ``cosine[j, k] = <d_j, d_k> / (|d_j| |d_k|)`` over all flattened entries (NaN where a norm is zero).

    Args:
        means_by_condition: ``[J, ...]`` or a list of ``J`` tensors (means, or batches of samples).
        mean_background: the unconditional mean ``[...]`` (or samples ``[N, ...]``).
        feature_fn: optional map to feature space, applied to batches ``[N, ...] -> [N, ...]``.
        samples: treat the inputs as samples rather than means.
        labels: optional names of the ``J`` conditions (for plots).

    Returns:
        :class:`~localscore.metrics.FeatureOrthogonality`.

    Examples:
        >>> import torch
        >>> bg = torch.zeros(2, 2)
        >>> a = bg.clone(); a[0, 0] = 1.0          # object in the top-left corner
        >>> b = bg.clone(); b[1, 1] = 2.0          # object in the bottom-right corner
        >>> c = a + b                              # both: overlaps both differences
        >>> feature_orthogonality(torch.stack([a, b, c]), bg).cosine.round(decimals=3).tolist()
        [[1.0, 0.0, 0.447], [0.0, 1.0, 0.894], [0.447, 0.894, 1.0]]
    """
    where = "feature_orthogonality"
    items = _as_list(means_by_condition, where)
    bg = check_tensor(mean_background, where, "mean_background")
    if feature_fn is not None and not callable(feature_fn):
        raise fail(where, f"`feature_fn` is {describe(feature_fn)}, expected a callable or None.")
    for j, t in enumerate(items):
        check_finite(t, where, f"means_by_condition[{j}]")
    check_finite(bg, where, "mean_background")
    if labels is not None and len(labels) != len(items):
        raise fail(where, f"`labels` has {len(labels)} names for {len(items)} conditions.")

    def feat_mean(t: Tensor, name: str) -> Tensor:
        batch = t if samples else t[None]
        if samples and (t.dim() < 1 or t.shape[0] == 0):
            raise fail(where, f"`{name}` has shape {tuple(t.shape)}, expected a batch [N, ...] of samples.")
        f = feature_fn(batch) if feature_fn is not None else batch
        if not isinstance(f, torch.Tensor) or f.shape[0] != batch.shape[0]:
            raise fail(where, f"`feature_fn` returned {describe(f)} for a batch of {batch.shape[0]}; expected "
                       "a tensor with the same batch size first.")
        return f.double().mean(0).flatten()

    mu0 = feat_mean(bg, "mean_background")
    ds = []
    for j, t in enumerate(items):
        mj = feat_mean(t, f"means_by_condition[{j}]")
        if mj.shape != mu0.shape:
            raise fail(where, f"condition {j} has {mj.numel()} (feature) entries but the background has "
                       f"{mu0.numel()}; expected the same shape.")
        ds.append(mj - mu0)
    d = torch.stack(ds)  # [J, F]
    norms = d.norm(dim=1)
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    cos = (d @ d.T) / (safe[:, None] * safe[None, :])
    zero = (norms == 0)
    cos = cos.masked_fill(zero[:, None] | zero[None, :], float("nan"))
    J = len(items)
    off = cos[~torch.eye(J, dtype=torch.bool)]
    max_off = float(off.abs().nan_to_num(0.0).max()) if off.numel() else 0.0
    return FeatureOrthogonality(cos.detach().cpu(), norms.detach().cpu(), max_off,
                                None if labels is None else tuple(labels))
