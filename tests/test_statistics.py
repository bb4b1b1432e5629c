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
