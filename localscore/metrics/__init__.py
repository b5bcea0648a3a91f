"""Measure locality: Jacobians (dense, coloured, probes), pixel and conditional locality, feature geometry."""

from __future__ import annotations

from .jacobians import BandedJacobian, JacobianProbes, LocalityViolation, jacobian, jvp_batch, vjp_batch

__all__ = [
    "BandedJacobian",
    "JacobianProbes",
    "LocalityViolation",
    "jacobian",
    "jvp_batch",
    "vjp_batch",
]
