import pytest
import torch

from vldd_lightning.core.augment import OPERATIONS, differentiable_augment, parse_strategy


def images(seed=0):
    return torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_same_generator_seed_gives_same_augmentation():
    ops = parse_strategy("color_crop_flip_scale_rotate_cutout")
    x = images()
    a = differentiable_augment(x, ops, torch.Generator().manual_seed(7))
    b = differentiable_augment(x, ops, torch.Generator().manual_seed(7))
    c = differentiable_augment(x, ops, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_no_operations_is_identity():
    x = images()
    assert differentiable_augment(x, parse_strategy("none"), torch.Generator()) is x


@pytest.mark.parametrize("operation", OPERATIONS)
def test_each_operation_changes_images_and_passes_gradients(operation):
    x = images(1).requires_grad_(True)
    out = differentiable_augment(x, (operation,), torch.Generator().manual_seed(3))
    assert out.shape == x.shape
    if operation != "flip":  # a flip may leave an image as is when its coin says so
        assert not torch.allclose(out, x)
    out.pow(2).sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


def test_augmentation_gradient_matches_finite_differences():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ops = parse_strategy("color_scale_rotate")

    def f(inp):
        return differentiable_augment(inp, ops, torch.Generator().manual_seed(5))

    assert torch.autograd.gradcheck(f, (x.requires_grad_(True),), eps=1e-6, atol=1e-5)


def test_unknown_operation_is_rejected():
    with pytest.raises(ValueError, match="unknown augmentation"):
        parse_strategy("color_blur")
