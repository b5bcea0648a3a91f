r"""Projective composition of per-object denoisers: guidance, negation, regional (masked) composition.

A *composition* turns a background denoiser ``D_bg`` and component denoisers ``D_1 .. D_n`` into one
denoiser::

    D_hat(x, sigma) = D_bg(x, sigma) + sum_j a_j(sigma) * ( D_j(x, sigma) - D_bg(x, sigma) )
    a_j[b, c, i, k]  = w_j[b](sigma) * on_j[b](sigma) * m_j[b, c, i, k](sigma)

with weights ``w_j`` (floats, tensors or functions of sigma), an on/off switch ``on_j`` (a sigma window, and
zero for a bound component whose conditioner set is empty for image ``b``) and optional masks ``m_j``
(``1`` everywhere for plain projective composition). Because Tweedie's map ``s = (D - x) / sigma**2`` is
affine in ``D`` and the ``a_j`` do not depend on ``x``, the same identity holds for scores:
``s_hat = s_bg + sum_j a_j (s_j - s_bg)``.

Under conditional projective composition (CPC, see ``docs/design.md``) the composition of single-object
denoisers with ``w_j = 1`` and the unconditional background *equals* the joint denoiser for any number of
objects. :func:`residual` measures how far a model is from that; :func:`terms` decomposes a composition at
known images into each object's own term and the other terms' cross-talk.

Every operator here returns a :class:`Composition`, which is itself a denoiser ``D(x, sigma, cond=None)``:
compositions nest, and every sampler accepts them. Components are denoisers: bound ones
(:func:`localscore.denoisers.bind`) or any callable of the protocol, called with ``cond=None``.

Evaluation strategies (identical results up to float round-off):

* ``sequential``: one call per denoiser (``n + 1`` calls).
* ``batched``: the background and the components that wrap the same network are stacked into one batch
  and evaluated in one call (chunked to ``max_batch`` images / ``max_pixels`` pixels per call).
* ``crop``: for local networks, each component is evaluated only on a crop around its support, dilated by
  the network's receptive radius, and pasted back; exact (see :class:`Composition`).
* ``auto``: ``crop`` when it is valid and cheaper, else ``batched`` on accelerators and ``sequential`` on
  the CPU (where stacking gives no parallelism and costs memory).

Every constructor takes the same keyword-only evaluation options (:class:`EvaluationOptions`). The package
is split by responsibility:

* :mod:`~localscore.compose.specs`: the weight, window and mask specs, checked and normalised once, at
  construction, into per-component coefficient and mask sources;
* :mod:`~localscore.compose.combination`: the combination formula, a pure function of the predictions it is
  given;
* :mod:`~localscore.compose.engine`: the evaluation engine (jobs, batching and chunking, the crop plan);
* :mod:`~localscore.compose.composition` (:class:`Composition`), :mod:`~localscore.compose.operators` (the
  constructors) and :mod:`~localscore.compose.residuals` put them together.
"""

from __future__ import annotations

from .composition import Composition, EvaluationOptions
from .operators import guidance, masked, masked_from, projective, projective_from
from .residuals import CompositionResidual, CompositionTerms, residual, terms
from .specs import MaskSpec, Strategy, WeightSchedule, WeightSpec

__all__ = [
    "Composition",
    "CompositionResidual",
    "CompositionTerms",
    "EvaluationOptions",
    "MaskSpec",
    "Strategy",
    "WeightSchedule",
    "WeightSpec",
    "guidance",
    "masked",
    "masked_from",
    "projective",
    "projective_from",
    "residual",
    "terms",
]
