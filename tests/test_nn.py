"""Dogfood: the library's networks (localscore.nn) checked with the testing toolkit.

The local network passes the whole LocalScoreTesterMixin battery at its declared radii; the global U-Net
fails the locality assertions with located messages; pixel_locality certifies the declared radius.
"""

from __future__ import annotations

import pytest
import torch

from localscore import Conditions
from localscore.metrics import conditional_locality, pixel_locality
from localscore.nn import GlobalConditionalDenoiser, LocalConditionalDenoiser
from localscore.testing import LocalScoreTesterMixin, assert_conditionally_local, assert_pixel_local


def _local() -> LocalConditionalDenoiser:
    torch.manual_seed(0)
    return LocalConditionalDenoiser(width=8, depth=1, attr_dim=2, cond_radius=1.5, heads=2, token_dim=8).eval()


class TestLocalConditionalDenoiserBattery(LocalScoreTesterMixin):
    image_shape = (3, 14, 14)
    attr_dim = 2
    sigmas = (0.05, 1.0, 20.0)
    hypothesis_examples = 4

    def make_model(self) -> LocalConditionalDenoiser:
        return _local()


def test_pixel_locality_certifies_declared_radius() -> None:
    D = _local()
    cond = Conditions.from_lists([[(3.0, 3.0), (10.0, 9.0)]], attrs=[[[1.0, 0.0], [0.0, 1.0]]])
    res = pixel_locality(D, torch.randn(1, 3, 14, 14), [0.1, 5.0], cond)
    assert res.method == "colored"
    # float32: verified to the bound (10 rtol S per row, rtol = 1e-4), so the share beyond R is at most ~1e-6
    out = res.outside(D.receptive_radius)
    assert bool((out > 0).all()) and bool((out < 1e-5).all())
    assert res.outside(D.receptive_radius - 1)[1].item() > 1e-4  # and the radius is used (sigma = 5)


def test_global_unet_fails_locality_assertions() -> None:
    torch.manual_seed(0)
    G = GlobalConditionalDenoiser(base_width=8, channel_mult=(1, 2), attention_levels=(1,), attr_dim=0,
                                  token_dim=8, heads=2, groups=4).eval()
    x = torch.randn(1, 3, 12, 12)
    cond = Conditions.from_lists([[(2.0, 2.0), (9.0, 9.0)]])
    with pytest.raises(AssertionError, match="not pixel-local at sigma = 1"):
        assert_pixel_local(G, x, 1.0, 4, cond=cond)
    with pytest.raises(AssertionError, match="not conditionally local at sigma = 1: conditioner"):
        assert_conditionally_local(G, x, 1.0, cond, 4.0)
    res = conditional_locality(G, x, 1.0, cond, regions=4.0)
    assert res.index["ablation"].item() < 0.9
