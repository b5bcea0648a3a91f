r"""The combination formula: the composed prediction from the predictions it is given.

Pure functions, like diffusers' guiders: they evaluate no model and check nothing; the engine
(:mod:`localscore.compose.engine`) evaluates the denoisers and hands their outputs here. Both compute

.. code-block:: text

    D_hat = D_bg + sum_j a_j * (D_j - D_bg),        a_j = w_j * on_j * m_j

:func:`combine` on full images (or on the images a component acts on), :func:`combine_crops` on crops of
them pasted back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

__all__ = ["Term", "combine", "combine_crops"]


@dataclass
class Term:
    """One component's share of :func:`combine`.

    Attributes:
        prediction: ``D_j`` on the images it acts on, ``[N, C, H, W]``.
        coef: ``w_j * on_j`` on those images, ``[N]``.
        mask: ``m_j``, ``[B or 1, 1 or C, H, W]`` on all ``B`` images (``None``: ones).
        images: the indices ``[N]`` of those images among the ``B`` (``None``: all of them, ``N = B``).
    """

    prediction: Tensor
    coef: Tensor
    mask: Tensor | None = None
    images: Tensor | None = None


def combine(background: Tensor, terms: Sequence[Term]) -> Tensor:
    r"""``D_hat = D_bg + sum_j a_j * (D_j - D_bg)`` with ``a_j = coef_j * m_j``, term by term.

    Line by line, starting from ``out = D_bg [B, C, H, W]``, for each term ``j`` in order::

        a_j = coef_j.view(N, 1, 1, 1) * m_j[images]                  # m_j = 1 without a mask
        out = out + a_j * (D_j - D_bg)                               # images = all
        out[images] += a_j * (D_j - D_bg[images])                    # otherwise (index_add)

    Args:
        background: ``D_bg``, ``[B, C, H, W]``.
        terms: one :class:`Term` per component that acts on some image.

    Returns:
        ``[B, C, H, W]``, the composed prediction.

    Examples:
        >>> import torch
        >>> bg, d1 = torch.zeros(2, 1, 1, 1), torch.ones(2, 1, 1, 1)
        >>> combine(bg, [Term(d1, torch.tensor([1.0, -0.5]))]).flatten().tolist()
        [1.0, -0.5]
        >>> combine(bg, [Term(d1[:1], torch.tensor([2.0]), images=torch.tensor([1]))]).flatten().tolist()
        [0.0, 2.0]
    """
    out = background
    for t in terms:
        a = t.coef.view(-1, 1, 1, 1)
        m = t.mask
        if t.images is None:
            if m is not None:
                a = a * m.to(background.dtype)
            out = out + a * (t.prediction - background)
        else:
            if m is not None:
                mm = m.to(background.dtype)
                a = a * (mm if mm.shape[0] == 1 else mm[t.images])
            out = out.index_add(0, t.images, a * (t.prediction - background[t.images]))
    return out


def combine_crops(background: Tensor, crops: Sequence[tuple[Tensor, Tensor, Tensor, Tensor, Tensor]],
                  reference: Sequence[Tensor | None] | None = None) -> Tensor:
    r"""``D_hat = D_bg + sum_e a_e * (D_e - R_e)`` pasted back, for crops ``e`` of the images.

    Each group of crops is ``(prediction [N, C, h, w], images [N], rows [N, h], cols [N, w], a [N, h, w, 1 or
    C])``: crop ``e`` of image ``images[e]`` covers the pixels ``rows[e] x cols[e]``, ``D_e = prediction[e]``,
    and ``a_e`` its coefficient ``w_j * on_j * m_j`` on the crop (zero where the crop must not be pasted). The
    reference ``R_e`` is ``D_bg`` read at the crop's pixels, or ``reference[g]`` (``[N, C, h, w]``, the
    background evaluated on the crops themselves) where given. Line by line, from ``out = D_bg`` viewed
    ``[B, H, W, C]``::

        R   = D_bg[images, :, rows, cols]          # or reference[g], channels last
        out[images, rows, cols] += a * (D_e - R)   # index_put with accumulate: crops may overlap

    Args:
        background: ``D_bg``, ``[B, C, H, W]``.
        crops: the groups of crops.
        reference: per group, ``None`` (read ``D_bg``) or the background on the crops.

    Returns:
        ``[B, C, H, W]``, the composed prediction.

    Examples:
        >>> import torch
        >>> bg = torch.zeros(1, 1, 2, 3)
        >>> crop = (torch.ones(1, 1, 2, 2), torch.tensor([0]), torch.tensor([[0, 1]]), torch.tensor([[1, 2]]),
        ...         torch.full((1, 2, 2, 1), 0.5))
        >>> combine_crops(bg, [crop])[0, 0].tolist()
        [[0.0, 0.5, 0.5], [0.0, 0.5, 0.5]]
    """
    out = background.permute(0, 2, 3, 1)  # [B, H, W, C] view
    for g, (y, bi, rows, cols, a) in enumerate(crops):
        b3, r3, c3 = bi[:, None, None], rows[:, :, None], cols[:, None, :]
        ref = None if reference is None else reference[g]
        r = background[b3, :, r3, c3] if ref is None else ref.permute(0, 2, 3, 1)
        out = out.index_put((b3, r3, c3), a * (y.permute(0, 2, 3, 1) - r), accumulate=True)
    return out.permute(0, 3, 1, 2).contiguous()
