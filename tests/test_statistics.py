import torch

from bitlens import BAEConfig, BinaryAutoencoder
from bitlens.analysis.statistics import coder_statistics


def test_statistics_match_direct_definitions():
    torch.manual_seed(0)
    model = BinaryAutoencoder(BAEConfig(d_in=16))
    x = torch.randn(3000, 16)
    stats = coder_statistics(model, x, chunk=700)  # several chunks, the last one short
    with torch.no_grad():
        codes = model.encode(x).double()
        x_hat = model.decode(model.encode(x)).double()
    f = codes.mean(0)
    cov = (codes - f).T @ (codes - f) / (len(codes) - 1)
    assert abs(stats["covariance"] - float(cov.abs().sum() - cov.diagonal().abs().sum())) < 1e-6
    xd = x.double()
    fvu = float((xd - x_hat).pow(2).sum() / (xd - xd.mean(0)).pow(2).sum())
    assert abs(stats["fvu"] - fvu) < 1e-9
    assert abs(stats["l0"] - float(codes.sum(1).mean())) < 1e-9
    assert stats["dead"] == int((f == 0).sum()) and stats["constant_on"] == int((f == 1).sum())


def test_cosine_and_norm_ratio_skip_zero_targets():
    """A zero target row (a planted code with every feature off) has no direction: it must not blow up the
    relative norm (it read 6e27 on the superposed family) or drag the cosine."""
    from bitlens.analysis.statistics import evaluate_coder

    class Shift(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def encode(self, x):
            return x

        def decode(self, c):
            return c + 0.1

    rows = torch.zeros(6, 3)
    rows[:3] = torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0]])
    stats = evaluate_coder(Shift(), rows, cofiring=False).stats
    assert 1.0 < stats["relative_norm"] < 1.2 and 0.9 < stats["cosine"] < 1.0
