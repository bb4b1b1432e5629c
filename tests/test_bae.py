import torch

import bitlens
from bitlens import BAEConfig, BinaryAutoencoder


def test_forward_shapes_and_binary_code():
    torch.manual_seed(0)
    m = BinaryAutoencoder(BAEConfig(d_in=8))
    x = torch.randn(5, 8)
    out = m(x)
    assert out.reconstruction.shape == (5, 8)
    assert out.code.shape == out.pre_activation.shape == (5, 32)
    assert torch.equal(out.code, (out.pre_activation > 0).float())
    assert torch.allclose(m.decode(m.encode(x)), out.reconstruction)


def test_encoder_bias_flag_and_width():
    assert BinaryAutoencoder(BAEConfig(d_in=4, encoder_bias=False)).encoder.bias is None
    assert BinaryAutoencoder(BAEConfig(d_in=4, expansion=2)).width == 8
    assert BinaryAutoencoder(BAEConfig(d_in=4, d_code=11)).width == 11


def test_input_scale_is_invisible_to_callers():
    torch.manual_seed(0)
    x = torch.randn(100, 6) * 1000
    m = BinaryAutoencoder(BAEConfig(d_in=6))
    s = m.fit_input_scale(x)
    assert abs(float((x / s).pow(2).sum(-1).mean()) - 6) < 1e-3
    code = m.encode(x)
    # the same code decodes to 1000x larger vectors than in the normalised space
    torch.testing.assert_close(m.decode(code), m.decode_normalized(code) * s)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    m = BinaryAutoencoder(BAEConfig(d_in=6, surrogate="official", encoder_bias=False))
    m.fit_input_scale(torch.randn(10, 6) * 7)
    bitlens.save_coder(m, tmp_path / "ckpt")
    loaded = bitlens.load(tmp_path / "ckpt")
    assert loaded.cfg == m.cfg
    x = torch.randn(4, 6)
    assert torch.equal(loaded(x).reconstruction, m(x).reconstruction)
    assert float(loaded.input_scale) == float(m.input_scale)
