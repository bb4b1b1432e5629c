import pytest
import torch

from bitlens.coders.step import SURROGATES, binarize


def _grad(x, surrogate, upstream, tau=1.0):
    x = x.clone().requires_grad_(True)
    h = binarize(x, surrogate, tau)
    (g,) = torch.autograd.grad(h, x, grad_outputs=upstream)
    return h, g


@pytest.mark.parametrize("surrogate", SURROGATES)
def test_forward_is_exactly_binary(surrogate):
    x = torch.randn(64, 32) * 3
    x[0, :4] = torch.tensor([0.0, -0.0, 1e-30, -1e-30])
    h = binarize(x, surrogate)
    assert h.dtype == x.dtype
    assert set(h.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(h, (x > 0).float())


def test_surrogate_backwards_match_formulas():
    torch.manual_seed(0)
    x = torch.randn(50, 20) * 2
    g = torch.randn(50, 20) * 3  # arbitrary upstream gradients, far from the small-g regime
    _, grad = _grad(x, "identity", g)
    assert torch.equal(grad, g)
    _, grad = _grad(x, "official", g)
    torch.testing.assert_close(grad, g * (1 - g))  # independent of x
    _, grad = _grad(x * 100, "official", g)
    torch.testing.assert_close(grad, g * (1 - g))
    _, grad = _grad(x, "paper", g)
    torch.testing.assert_close(grad, g * x * (1 - x))
    for tau in (0.3, 1.0, 2.5):
        _, grad = _grad(x, "sigmoid", g, tau)
        s = torch.sigmoid(x / tau)
        torch.testing.assert_close(grad, g * s * (1 - s) / tau)


def test_official_sign_flip_for_large_gradients():
    _, grad = _grad(torch.tensor([1.0, -1.0, 0.5]), "official", torch.tensor([2.0, 0.5, -0.5]))
    torch.testing.assert_close(grad, torch.tensor([-2.0, 0.25, -0.75]))


def test_bad_surrogate_and_tau():
    with pytest.raises(ValueError, match="unknown surrogate"):
        binarize(torch.zeros(2), "relu")
    with pytest.raises(ValueError, match="tau"):
        binarize(torch.zeros(2), "sigmoid", 0.0)
