"""Every seed the API accepts names its own image: PyTorch's CPU generator alone would alias s and s + 2^32."""

import torch

from serverless_sd.seeds import generator

from test_app import generate


def noise(seed: int) -> torch.Tensor:
    return torch.randn(64, generator=generator(seed))


def test_seeds_below_2_32_are_seeded_as_pytorch_seeds_them():
    for seed in (0, 1, 1234, 2**32 - 1):
        assert torch.equal(noise(seed), torch.randn(64, generator=torch.Generator().manual_seed(seed)))


def test_seeds_that_differ_above_bit_32_give_different_noise():
    for seed in (0, 5, 2**32 - 1):
        assert not torch.equal(noise(seed), noise(seed + 2**32))
    assert not torch.equal(noise(2**63), noise(2**63 + 2**32))
    assert not torch.equal(noise(2**64 - 1), noise(2**64 - 1 - 2**32))


def test_large_seeds_reproduce():
    for seed in (2**32, 2**40 + 7, 2**64 - 1):
        assert torch.equal(noise(seed), noise(seed))


def test_through_the_app_s_and_s_plus_2_32_are_different_images(sd_app):
    seed = 77
    low, high = generate(sd_app, seed=seed), generate(sd_app, seed=seed + 2**32)
    assert high["seed"] == seed + 2**32
    assert low["image_base64"] != high["image_base64"]
    assert generate(sd_app, seed=seed + 2**32)["image_base64"] == high["image_base64"]
