"""Measure locality: Jacobians (dense, coloured, probes), influence maps of conditioners, pixel and conditional
locality, feature geometry.

Distances are Chebyshev (square neighbourhoods, the metric of declared receptive radii) unless a
function takes ``metric="euclidean"``; every result records the metric it used.

The composition residual, ``||D(x|c_J) - proj|| / ||D(x|c_J) - D(x|none)||`` per image and per pixel, is
:func:`localscore.compose.residual`; 0.1.0 also exported it here as ``composition_residual`` (with
``CompositionResidual``), names that still resolve with a ``DeprecationWarning`` until 0.3.
"""

from __future__ import annotations

from .._moved import moved_getattr
from .features import feature_orthogonality
from .influence import ablation_influence, gradient_influence, math_attention
from .jacobians import BandedJacobian, JacobianProbes, LocalityViolation, jacobian, jvp_batch, vjp_batch
from .locality import conditional_locality, influence_radius, locality_index, pixel_locality
from .results import ConditionalLocality, FeatureOrthogonality, LocalityIndex, PixelLocality

__all__ = [
    "BandedJacobian",
    "ConditionalLocality",
    "FeatureOrthogonality",
    "JacobianProbes",
    "LocalityIndex",
    "LocalityViolation",
    "PixelLocality",
    "ablation_influence",
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


# 0.1.0 names of localscore.compose's residual (two names for one thing); they warn until 0.3.
__getattr__ = moved_getattr(__name__, {"composition_residual": "localscore.compose.residual",
                                       "CompositionResidual": "localscore.compose.CompositionResidual"})
