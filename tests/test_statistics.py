import pytest
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


def test_cofiring_counts_from_the_live_lower_triangle_are_the_full_gram():
    """Issue 18: the evaluation multiplies only units that fire in a chunk, and only the lower block triangle; the
    counts must equal the plain Gram matrix (with dead units, a block that does not divide the width, and both
    the float and the int8 routes of ``int_mm``)."""
    import os

    from bitlens.analysis.statistics import CofiringCounts
    from bitlens.ops import bit_products

    torch.manual_seed(1)
    active = torch.rand(300, 70) < torch.rand(70) * 0.3
    active[:, [3, 17, 40]] = False  # dead units
    active[:, 5] = True  # a constant-on unit
    every = torch.rand(50, 70) < 0.5
    every[0] = True  # a chunk in which every unit fires (the in-place route)
    active = torch.cat([active, every])
    full = active.long().T @ active.long()
    for forced in ("0", "1"):
        os.environ["BITLENS_INT8_MM"] = forced
        bit_products.cpu_int8_is_fast.cache_clear()
        try:
            for block, cut in ((16, 120), (1000, 300), (7, 0), (16, 290)):
                counts = CofiringCounts(70, block=block)
                counts.add(active[:cut])
                counts.add(active[cut:])
                counts.add(torch.zeros(5, 70, dtype=torch.bool))
                assert torch.equal(counts.result(), full)
            counts = CofiringCounts(70, block=16)
            counts.limit = 100  # partial sums moved to int64 every 100 rows
            for lo in range(0, 350, 60):
                counts.add(active[lo:lo + 60])
            assert torch.equal(counts.result(), full)
        finally:
            os.environ.pop("BITLENS_INT8_MM")
            bit_products.cpu_int8_is_fast.cache_clear()


def test_covariance_penalty_from_the_lower_triangle_equals_the_full_matrix():
    """Issue 18: the evaluation's covariance statistic (sum of |off-diagonal| unbiased covariances) is read from the
    lower triangle of the counts in row blocks; it must equal the formula on the full matrix, on both int_mm
    routes, with dead and constant-on units, a block that does not divide the width, and after a flush."""
    import os

    from bitlens.analysis.statistics import CofiringCounts
    from bitlens.ops import bit_products

    torch.manual_seed(2)
    active = torch.rand(400, 70) < torch.rand(70) * 0.4
    active[:, [3, 40]] = False
    active[:, 5] = True
    n = active.shape[0]
    f = active.double().mean(0)
    cov = (active.double().T @ active.double() - n * torch.outer(f, f)) / (n - 1)
    expected = float(cov.abs().sum() - cov.diagonal().abs().sum())
    for forced in ("0", "1"):
        os.environ["BITLENS_INT8_MM"] = forced
        bit_products.cpu_int8_is_fast.cache_clear()
        try:
            for block, limit in ((16, None), (7, None), (1000, None), (16, 150)):
                counts = CofiringCounts(70, block=block)
                if limit:
                    counts.limit = limit  # the int64 route once a partial sum was flushed
                for lo in range(0, n, 100):
                    counts.add(active[lo:lo + 100])
                assert counts.abs_covariance_sum(f, n) == pytest.approx(expected, rel=1e-12)
        finally:
            os.environ.pop("BITLENS_INT8_MM")
            bit_products.cpu_int8_is_fast.cache_clear()
