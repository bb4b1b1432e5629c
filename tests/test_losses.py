import itertools

import torch

from bitlens.training import losses
from bitlens.training.schedules import cosine_tail, warmup


def test_entropy_of_fair_units_plus_constant_units_is_r_bits():
    r, n = 5, 2 ** 5
    fair = torch.tensor(list(itertools.product([0.0, 1.0], repeat=r)))  # every unit exactly p = 1/2
    codes = torch.cat([fair, torch.zeros(n, 7), torch.ones(n, 4)], 1)
    h = losses.minibatch_entropy(codes)
    torch.testing.assert_close(h, torch.tensor(float(r)), atol=1e-6, rtol=0)


def test_binary_entropy_symmetric_and_bounded():
    p = torch.linspace(0, 1, 101)
    h = losses.binary_entropy(p)
    torch.testing.assert_close(h, losses.binary_entropy(1 - p), atol=1e-6, rtol=0)
    assert h.max() <= 1 + 1e-6 and h.min() >= -1e-6


def test_entropy_threshold_gives_gradient_free_zero():
    codes = torch.tensor([[1.0, 0.0], [0.0, 0.0]], requires_grad=True)
    h = losses.minibatch_entropy(codes, threshold=5.0)
    assert h.item() == 0 and not h.requires_grad
    assert losses.minibatch_entropy(codes, threshold=0.5).requires_grad


def test_covariance_penalty_matches_double_loop():
    torch.manual_seed(0)
    for b, m in [(2, 3), (7, 5), (16, 9)]:
        codes = (torch.rand(b, m) < 0.3).double()
        mean = codes.mean(0)
        total = 0.0
        for i in range(m):
            for j in range(m):
                if i != j:
                    c = sum((codes[k, i] - mean[i]) * (codes[k, j] - mean[j]) for k in range(b)) / (b - 1)
                    total += abs(float(c))
        torch.testing.assert_close(losses.covariance_penalty(codes), torch.tensor(total, dtype=torch.float64))


def test_covariance_penalty_zero_for_identical_rows():
    assert losses.covariance_penalty(torch.ones(8, 1) @ torch.rand(1, 6)).item() == 0


def test_reconstruction_terms():
    x = torch.randn(100, 8)
    mean_pred = x.mean(0).expand_as(x)
    torch.testing.assert_close(losses.fvu(x, mean_pred), torch.tensor(1.0))
    assert losses.fvu(x, x).item() == 0
    var = (x - x.mean(0)).pow(2).sum(-1).mean()
    torch.testing.assert_close(losses.normalized_mse(x, mean_pred, var), torch.tensor(1.0))
    torch.testing.assert_close(losses.mse(x, torch.zeros_like(x)), x.pow(2).mean())


def test_warmup_schedule():
    assert [warmup(s, 3, 0) for s in range(6)] == [0, 0, 0, 1, 1, 1]  # the official hard switch
    assert [warmup(s, 2, 4) for s in range(8)] == [0, 0, 0.25, 0.5, 0.75, 1, 1, 1]
    assert warmup(0, 0, 0) == 1.0


def test_cosine_tail():
    assert cosine_tail(0, 100, 0.3, 0.1) == 1.0
    assert cosine_tail(69, 100, 0.3, 0.1) == 1.0
    assert abs(cosine_tail(100, 100, 0.3, 0.1) - 0.1) < 1e-12
    assert 0.1 < cosine_tail(85, 100, 0.3, 0.1) < 1
    assert cosine_tail(50, 100, 0.0, 0.1) == 1.0
