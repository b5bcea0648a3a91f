"""Measure locality: Jacobians (dense, coloured, probes), influence maps of conditioners, pixel and conditional
locality, feature geometry.

Distances are Chebyshev (square neighbourhoods, the metric of declared receptive radii) unless a
function takes ``metric="euclidean"``; every result records the metric it used.

``composition_residual`` is :func:`localscore.compose.residual` (the same function under the name the
metrics use): ``||D(x|c_J) - proj|| / ||D(x|c_J) - D(x|none)||`` per image and per pixel.
"""

from __future__ import annotations

from ..compose import CompositionResidual
from ..compose import residual as composition_residual
from .features import feature_orthogonality
from .influence import ablation_influence, gradient_influence, math_attention
from .jacobians import BandedJacobian, JacobianProbes, LocalityViolation, jacobian, jvp_batch, vjp_batch
from .locality import conditional_locality, influence_radius, locality_index, pixel_locality
from .results import ConditionalLocality, FeatureOrthogonality, LocalityIndex, PixelLocality

__all__ = [
    "BandedJacobian",
    "CompositionResidual",
    "ConditionalLocality",
    "FeatureOrthogonality",
    "JacobianProbes",
    "LocalityIndex",
    "LocalityViolation",
    "PixelLocality",
    "ablation_influence",
    "composition_residual",
    "conditional_locality",
    "feature_orthogonality",
    "gradient_influence",
    "influence_radius",
    "jacobian",
    "jvp_batch",
    "locality_index",
    "math_attention",
    "pixel_locality",
    "vjp_batch",
]
