import pytest
import torch
from torch import nn

from vldd_lightning.core.params import FunctionalModel, ParamLayout


def test_layout_flatten_unflatten_round_trip():
    module = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    layout = ParamLayout.from_named(module.named_parameters())
    assert layout.numel == 3 * 4 + 4 + 4 * 2 + 2
    flat = layout.flatten(dict(module.named_parameters()))
    pieces = layout.unflatten(flat)
    for name, param in module.named_parameters():
        assert torch.equal(pieces[name], param)


def test_layout_description_round_trip():
    layout = ParamLayout(("a.weight", "a.bias"), ((2, 3), (2,)))
    assert ParamLayout.from_description(layout.describe()) == layout


def test_unflatten_rejects_wrong_size():
    layout = ParamLayout(("w",), ((2, 2),))
    with pytest.raises(ValueError, match="4 values"):
        layout.unflatten(torch.zeros(5))


def test_functional_model_matches_module_and_leaves_it_unchanged():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    layout = ParamLayout.from_named((n, p) for n, p in module.named_parameters() if n.startswith("2."))
    functional = FunctionalModel(module, (layout,))
    x = torch.randn(5, 3)
    flat = layout.flatten(dict(module.named_parameters()))
    assert torch.allclose(functional((flat,), x), module(x))

    # adding 1 to every weight and bias of the last layer adds sum(hidden) + 1 to each output
    before = [p.clone() for p in module.parameters()]
    out = functional((flat + 1.0,), x)
    hidden = module[1](module[0](x))
    assert torch.allclose(out, module[2](hidden) + hidden.sum(dim=1, keepdim=True) + 1.0)
    for old, new in zip(before, module.parameters(), strict=True):
        assert torch.equal(old, new)


def test_functional_model_gradient_reaches_flat_vector():
    module = nn.Linear(3, 1)
    layout = ParamLayout.from_named(module.named_parameters())
    flat = layout.flatten(dict(module.named_parameters())).detach().requires_grad_(True)
    x = torch.tensor([[1.0, 2.0, 3.0]])
    FunctionalModel(module, (layout,))((flat,), x).sum().backward()
    assert flat.grad.tolist() == [1.0, 2.0, 3.0, 1.0]
