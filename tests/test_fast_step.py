"""The fast BAE step must give the reference (losses.py + autograd) loss and gradients, on every path."""

import itertools

import pytest
import torch

from bitlens.coders.bae import BAEConfig, BinaryAutoencoder
from bitlens.ops import bit_products, fast_cov
from bitlens.training import fast_step, losses
from bitlens.training.config import LossConfig
from bitlens.training.objective import bae_objective, reference_objective

SWITCHES = fast_step.DENSITY_SWITCHES  # set them all to force a path

# Batch sizes are powers of two or prime: then a covariance that is exactly 0 is also exactly 0 in the float
# reference (B * mean is exact), so the reference's sign(0) = 0 is well defined and comparable.
BATCHES = (2, 7, 64)


def _codes(b: int, m: int, density: float, seed: int, kind: str = "random") -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if kind == "off":
        return torch.zeros(b, m)
    if kind == "on":
        return torch.ones(b, m)
    h = (torch.rand(b, m, generator=gen) < density).float()
    if kind == "structured":  # duplicated rows, a frequent unit, a constant-on and a dead unit
        h[1::3] = h[0]
        h[:, 0] = (torch.rand(b, generator=gen) < 0.7).float()
        h[:, 1] = 1.0
        h[:, 2] = 0.0
    return h


def _reference_cov(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    codes = h.double().requires_grad_(True)
    d = losses.covariance_penalty(codes)
    (g,) = torch.autograd.grad(d, codes)
    return d.detach(), g


def _fast_cov(h: torch.Tensor, path: str) -> tuple[torch.Tensor, torch.Tensor]:
    h8 = h.to(torch.int8)
    n, l = h8.sum(0, dtype=torch.int32), h8.sum(1, dtype=torch.int32)
    if path == "gather":  # fp32 bits, S built a few units at a time (block_floats small: several blocks)
        hf = h.float()
        lists, lists_t = fast_cov.row_lists(hf, padded=False), fast_cov.row_lists(hf.t(), padded=False)
        hs = fast_cov.gather_sign_product(hf, n.float(), lists, lists_t, block_floats=3 * h.shape[1]).to(torch.int32)
    elif path == "dense":
        hs = fast_cov.dense_sign_product(h8, n, block=5)
    else:
        hs = fast_cov.sparse_sign_product(h8, n, l)
    d = fast_cov.penalty_from_sign_product(hs, h8, n)
    b = h.shape[0]
    hsd = hs.double()
    return d, 2 / (b - 1) * (hsd - hsd.mean(0))


CASES = [(b, m, dens, kind) for b in BATCHES for m in (1, 3, 17, 40) for dens in (0.05, 0.3, 0.9)
         for kind in ("random", "structured") if not (kind == "structured" and m < 3)]
CASES += [(b, m, 0.0, kind) for b in BATCHES for m in (1, 9) for kind in ("off", "on")]


@pytest.mark.parametrize("path", ["dense", "sparse", "gather"])
@pytest.mark.parametrize("b,m,density,kind", CASES)
def test_covariance_paths_equal_reference(path, b, m, density, kind):
    h = _codes(b, m, density, seed=b * 1000 + m, kind=kind)
    d_ref, g_ref = _reference_cov(h)
    d, g = _fast_cov(h, path)
    torch.testing.assert_close(d, d_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)


def test_repeated_pairs_counts_co_occurrences():
    h = _codes(64, 30, 0.2, seed=3, kind="structured")
    h[:, :2] = 0  # no frequent units
    h8 = h.to(torch.int8)
    padded = fast_cov.row_lists(h8).padded
    i, j, g = fast_cov.repeated_pairs(h8, padded, fast_cov.int_mm(h8, h8.t().contiguous()))
    gram = (h.t() @ h).long()
    want = {(a, c): int(gram[a, c]) for a in range(30) for c in range(a + 1, 30) if gram[a, c] >= 2}
    assert dict(zip(zip(i.tolist(), j.tolist()), g.tolist())) == want


def _grads(objective, model, x, cfg, step):
    model.zero_grad(set_to_none=True)
    terms = objective(model, x, cfg, 2.5, step, 100)
    terms.loss.backward()
    return terms, {k: p.grad.clone() for k, p in model.named_parameters()}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30)) if b.norm() > 0 else float(a.norm())


def use_route(monkeypatch, route: str) -> None:
    """Force the bit products' route whatever this CPU has: fp32 GEMMs (AVX2), int8 GEMMs with the gather
    covariance of sparse codes (AVX-512, d' up to GATHER_MAX_WIDTH_INT8_CPU) or with row overlaps (wider codes)."""
    monkeypatch.setattr(bit_products, "cpu_int8_is_fast", lambda: route != "fp32")
    if route == "int8_overlap":
        monkeypatch.setattr(fast_step, "GATHER_MAX_WIDTH_INT8_CPU", 0)


@pytest.mark.parametrize("route", ["fp32", "int8_gather", "int8_overlap"])
@pytest.mark.parametrize("path", ["dense", "sparse"])
@pytest.mark.parametrize("surrogate", ["identity", "sigmoid", "paper", "official"])
@pytest.mark.parametrize("preset", ["scale_free", "paper"])
def test_objective_equals_reference(monkeypatch, route, path, surrogate, preset):
    if route == "int8_overlap" and path == "dense":
        pytest.skip("the overlap/gather choice is the sparse path's")
    use_route(monkeypatch, route)
    for name in SWITCHES:
        monkeypatch.setattr(fast_step, name, 2.0 if path == "sparse" else -1.0)
    for (b, d, bias), threshold, step in itertools.product([(64, 12, 0.0), (64, 12, -1.5), (7, 5, 0.3), (2, 6, 0.0)],
                                                           [0.0, 3.0, 1e6], [0, 50]):
        torch.manual_seed(b + d)
        model = BinaryAutoencoder(BAEConfig(d_in=d, surrogate=surrogate, tau=0.5))
        with torch.no_grad():
            model.encoder.bias.add_(bias)
        x = torch.randn(b, d) * 3
        model.fit_input_scale(x)
        # weights well above the defaults (so every term matters) but not so large that the covariance gradient,
        # whose batch sum is 0, swamps the bias gradient in float cancellation (then the fp32 reference itself errs)
        weights = dict(entropy_weight=10.0, cov_weight=1000.0) if preset == "scale_free" else \
            dict(entropy_weight=1e-3, cov_weight=1e-3)
        cfg = LossConfig(preset=preset, entropy_threshold=threshold, **weights)
        ref, g_ref = _grads(reference_objective, model, x, cfg, step)
        out, g = _grads(bae_objective, model, x, cfg, step)
        for name in ("loss", "recon", "entropy", "covariance"):
            r, f = getattr(ref, name).detach(), getattr(out, name).detach()
            assert abs(float(f - r)) <= 1e-5 * max(abs(float(r)), 1e-6), (name, float(f), float(r))
        assert (out.entropy_weight, out.cov_weight) == (ref.entropy_weight, ref.cov_weight)
        for k in g_ref:
            assert _rel(g[k], g_ref[k]) <= 1e-4, (k, _rel(g[k], g_ref[k]), b, bias, threshold, step)


@pytest.mark.parametrize("route", ["fp32", "int8_gather", "int8_overlap"])
@pytest.mark.parametrize("kind", ["off", "on"])
@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_all_bits_off_or_on(monkeypatch, kind, path, route):
    use_route(monkeypatch, route)
    for name in SWITCHES:
        monkeypatch.setattr(fast_step, name, 2.0 if path == "sparse" else -1.0)
    for b in (2, 16):
        torch.manual_seed(b)
        model = BinaryAutoencoder(BAEConfig(d_in=6, surrogate="sigmoid"))
        with torch.no_grad():
            model.encoder.bias.fill_(-1e4 if kind == "off" else 1e4)
        x = torch.randn(b, 6)
        cfg = LossConfig(cov_weight=10.0)
        ref, g_ref = _grads(reference_objective, model, x, cfg, 100)
        out, g = _grads(bae_objective, model, x, cfg, 100)
        torch.testing.assert_close(out.loss.detach(), ref.loss.detach(), rtol=1e-5, atol=0)
        assert float(out.covariance.detach()) == 0
        for k in g_ref:
            torch.testing.assert_close(g[k], g_ref[k], rtol=1e-4, atol=1e-7)


def test_auto_path_switches_on_density(monkeypatch):
    assert fast_step.choose_path(0.01) == "sparse"
    assert fast_step.choose_path(0.5) == "dense"
    assert fast_step.choose_path(0.5, "sparse") == "sparse"
    assert fast_step.choose_path(0.03, device_type="cuda") == "sparse"  # fast int8 products: the higher switch
    monkeypatch.setattr(bit_products, "cpu_int8_is_fast", lambda: False)
    assert fast_step.choose_path(0.03) == "sparse"  # fp32 products: the gather path, measured to a higher switch
    assert fast_step.choose_path(0.2) == "dense"
    assert fast_step.choose_path(0.03, gather=False) == "dense"  # several processes: the row-overlap path
    monkeypatch.setattr(bit_products, "cpu_int8_is_fast", lambda: True)
    assert fast_step.choose_path(0.03) == "sparse"
    assert fast_step.choose_path(0.06) == "dense"
    assert fast_step.choose_path(0.02, gather=False) == "dense"  # int8 row overlaps: measured to a lower switch
    assert fast_step.choose_path(0.01, gather=False) == "sparse"
    assert fast_step.gathers_covariance("cpu", 2304, 512) and not fast_step.gathers_covariance("cpu", 8192, 512)


@pytest.mark.parametrize("route", ["fp32", "int8_gather", "int8_overlap"])
def test_sparse_routes_agree_exactly(monkeypatch, route):
    """Every route computes the same integer covariance, so loss and gradients match the fp32 gather route."""
    for name in SWITCHES:
        monkeypatch.setattr(fast_step, name, 2.0)
    torch.manual_seed(3)
    model = BinaryAutoencoder(BAEConfig(d_in=16, surrogate="sigmoid"))
    with torch.no_grad():
        model.encoder.bias.sub_(1.0)
    x = torch.randn(128, 16)
    model.fit_input_scale(x)
    cfg = LossConfig(entropy_weight=10.0, cov_weight=1000.0)
    with monkeypatch.context() as m:
        use_route(m, "fp32")
        ref, g_ref = _grads(bae_objective, model, x, cfg, 100)
    use_route(monkeypatch, route)
    out, g = _grads(bae_objective, model, x, cfg, 100)
    assert float(out.covariance) == float(ref.covariance) and float(out.entropy) == float(ref.entropy)
    for k in g_ref:
        torch.testing.assert_close(g[k], g_ref[k], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_fast_step_is_deterministic(monkeypatch, path):
    """Bit-exact resume needs the same gradients for the same inputs."""
    for name in SWITCHES:
        monkeypatch.setattr(fast_step, name, 2.0 if path == "sparse" else -1.0)
    torch.manual_seed(0)
    model = BinaryAutoencoder(BAEConfig(d_in=24, surrogate="sigmoid"))
    with torch.no_grad():
        model.encoder.bias.add_(-1.0)
    x = torch.randn(128, 24)
    runs = [_grads(bae_objective, model, x, LossConfig(), 100) for _ in range(2)]
    assert torch.equal(runs[0][0].loss, runs[1][0].loss)
    for k in runs[0][1]:
        assert torch.equal(runs[0][1][k], runs[1][1][k]), k


@pytest.mark.parametrize("b,m,density", [(7, 40, 0.3), (64, 130, 0.05), (33, 17, 0.9)])
def test_dense_sign_product_float_and_integer_routes_agree(monkeypatch, b, m, density):
    """CPUs without a fast int8 GEMM take an all-fp32 route; it must give the integer route's hS exactly."""
    h8 = _codes(b, m, density, seed=b + m).to(torch.int8)
    n = h8.sum(0, dtype=torch.int32)
    monkeypatch.setattr(fast_cov, "int8_gemm_is_fast", lambda device_type: True)
    integer = fast_cov.dense_sign_product(h8, n, block=16)
    monkeypatch.setattr(fast_cov, "int8_gemm_is_fast", lambda device_type: False)
    floats = fast_cov.dense_sign_product(h8, n, block=16)
    assert floats.dtype == torch.int32 and torch.equal(floats, integer)


@pytest.mark.parametrize("b,m,density", [(7, 40, 0.3), (64, 130, 0.05), (33, 17, 0.9), (2, 1, 0.5)])
@pytest.mark.parametrize("tile_rows", [3, 16, 10 ** 9])
def test_dense_sign_product_gram_from_a_view_or_a_copy_agree(monkeypatch, b, m, density, tile_rows):
    """The CPU Gram reads h8^T as a column-major view up to VIEW_GRAM_MAX_WIDTH units, a row-major copy above; its
    column blocks are built GRAM_TILE_ROWS rows at a time. Every way gives the float64 formula's hS."""
    h8 = _codes(b, m, density, seed=b + 2 * m).to(torch.int8)
    n = h8.sum(0, dtype=torch.int32)
    monkeypatch.setattr(fast_cov, "int8_gemm_is_fast", lambda device_type: True)
    monkeypatch.setattr(fast_cov, "GRAM_TILE_ROWS", tile_rows)
    monkeypatch.setattr(fast_cov, "VIEW_GRAM_MAX_WIDTH", 10 ** 9)
    view = fast_cov.dense_sign_product(h8, n, block=16)
    monkeypatch.setattr(fast_cov, "VIEW_GRAM_MAX_WIDTH", 0)
    copy = fast_cov.dense_sign_product(h8, n, block=16)
    assert torch.equal(view, copy)
    hsd = h8.double() @ torch.sign(b * (h8.double().t() @ h8.double()) - n.double().outer(n.double())).fill_diagonal_(0)
    assert torch.equal(view, hsd.to(torch.int32))


def test_row_dots_and_column_sums_equal_int64_sums():
    gen = torch.Generator().manual_seed(3)
    hs = torch.randint(-500, 500, (37, 501), generator=gen, dtype=torch.int32)
    h8 = (torch.rand(37, 501, generator=gen) < 0.4).to(torch.int8)
    assert torch.equal(fast_cov.row_dots(hs, h8).long(), (hs.long() * h8.long()).sum(1))
    sums = fast_cov.column_sums(hs)
    assert sums.dtype == torch.int64 and torch.equal(sums, hs.long().sum(0))


def test_row_dots_stay_exact_past_fp32_integers():
    # m = 5000: a row dot reaches 5000 * 4999 > 2^24, so row_dots must split the columns (chunks of 3355) to stay exact
    gen = torch.Generator().manual_seed(4)
    b, m = 4, 5000
    hs = (torch.randint(0, 2, (b, m), generator=gen, dtype=torch.int32) * 2 - 1) * (m - 1)
    hs[0] = m - 1  # all at the extreme: the dot is m (m - 1)
    hs[1, ::2] = m - 1
    hs[1, 1::2] = m - 3
    hs[1, 0] = m - 2  # an odd sum past 2^24, which no fp32 accumulator can hold
    bits = torch.ones(b, m, dtype=torch.int8)
    bits[3] = (torch.rand(m, generator=gen) < 0.5).to(torch.int8)
    want = (hs.long() * bits.long()).sum(1)
    assert want[0] == m * (m - 1) and want[1] % 2 == 1 and want[1] > 2 ** 24
    assert int(torch.linalg.vecdot(hs[1].float(), bits[1].float())) != want[1]  # why the columns are split
    assert torch.equal(fast_cov.row_dots(hs, bits), want)
    assert torch.equal(fast_cov.row_dots(hs.float(), bits.float()), want)  # fp32 hS and bits, as the step has them


@pytest.mark.parametrize("b,m,density", [(7, 40, 0.3), (64, 130, 0.05), (33, 17, 0.9), (5, 3, 0.0)])
def test_transposed_lists_are_the_row_lists_of_the_transpose(b, m, density):
    h = _codes(b, m, density, seed=b * m + 1)
    lists = fast_cov.row_lists(h, padded=False)
    want, got = fast_cov.row_lists(h.t(), padded=False), fast_cov.transposed_lists(lists, m)
    for name in ("rows", "cols", "offsets"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name


@pytest.mark.parametrize("half_exact", [0, fast_cov.HALF_EXACT])
@pytest.mark.parametrize("block_floats", [3 * 40, 1 << 20])
def test_gather_sign_product_fp16_and_fp32_gathers_are_exact(monkeypatch, half_exact, block_floats):
    """S rows are gathered in fp16 unless a row of h has more ones than fp16 counts exactly (forced here: 0)."""
    h = _codes(64, 40, 0.3, seed=5, kind="structured")
    monkeypatch.setattr(fast_cov, "HALF_EXACT", half_exact)
    n = h.sum(0)
    lists = fast_cov.row_lists(h, padded=False)
    hs = fast_cov.gather_sign_product(h, n, lists, fast_cov.transposed_lists(lists, 40), block_floats=block_floats)
    assert hs.dtype == torch.float32
    h8 = h.to(torch.int8)
    d = fast_cov.penalty_from_sign_product(hs.to(torch.int32), h8, n.to(torch.int32))
    d_ref, g_ref = _reference_cov(h)
    torch.testing.assert_close(d, d_ref, rtol=1e-12, atol=1e-12)
    hsd = hs.double()
    torch.testing.assert_close(2 / 63 * (hsd - hsd.mean(0)), g_ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("route", ["fp32", "int8"])
def test_row_overlaps_stay_int8_when_rows_have_more_than_127_ones(monkeypatch, route):
    """The overlaps' diagonal (the popcounts) is added apart, so rows of ~150 ones keep the int8 product; exact."""
    h = _codes(64, 300, 0.5, seed=11)
    monkeypatch.setattr(bit_products, "cpu_int8_is_fast", lambda: route == "int8")
    largest = []
    real_count_mm = fast_cov.count_mm

    def spy(a, b):
        largest.append(int(a.max()))
        return real_count_mm(a, b)
    monkeypatch.setattr(fast_cov, "count_mm", spy)
    d, g = _fast_cov(h, "sparse")
    assert int(h.sum(1).max()) > bit_products.INT8_MAX and largest and max(largest) <= bit_products.INT8_MAX
    d_ref, g_ref = _reference_cov(h)
    torch.testing.assert_close(d, d_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)
