"""Measure locality: Jacobians (dense, coloured, probes), pixel and conditional locality, feature geometry.

Distances are Chebyshev (square neighbourhoods, the metric of declared receptive radii) unless a
function takes ``metric="euclidean"``; every result records the metric it used.
"""

from __future__ import annotations

from .features import feature_orthogonality
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
    "conditional_locality",
    "feature_orthogonality",
    "influence_radius",
    "jacobian",
    "jvp_batch",
    "locality_index",
    "pixel_locality",
    "vjp_batch",
]
