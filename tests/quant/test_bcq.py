import copy

import pytest
import torch
from torch import nn

from workbench.quant.bcq import BCQLinear, bcq_dequantize, bcq_fit, bcq_quantize_model
from workbench.quant import QuantConfig


pytestmark = pytest.mark.usefixtures("one_thread")


def _weight(out=16, cols=256, seed=0):
    return torch.randn(out, cols, generator=torch.Generator().manual_seed(seed))


def _rel_error(w, config):
    alpha, binary, _ = bcq_fit(w, config)
    w_hat = bcq_dequantize(alpha, binary, config.group_len(w.shape[1]))
    return (torch.linalg.norm(w - w_hat) / torch.linalg.norm(w)).item()


def test_shapes_and_dtypes():
    w = _weight(cols=576)
    alpha, binary, _ = bcq_fit(w, QuantConfig(method="bcq", bits=3, group_size=128))
    assert alpha.shape == (3, 16, 5) and alpha.dtype == torch.float32   # 4 x 128 + one group of 64
    assert binary.shape == (3, 16, 576) and binary.dtype == torch.int8
    assert set(binary.unique().tolist()) == {-1, 1}
    assert torch.equal(alpha, alpha.half().float())                      # exactly representable in fp16
    assert (alpha >= 0).all()


def test_more_planes_less_error():
    w = _weight()
    errs = [_rel_error(w, QuantConfig(method="bcq", bits=q, group_size=64)) for q in (1, 2, 3, 4)]
    assert all(a > b for a, b in zip(errs, errs[1:])), errs


def test_als_improves_on_greedy_and_never_hurts():
    w = _weight()
    errs = [_rel_error(w, QuantConfig(method="bcq", bits=3, group_size=64, bcq_iters=n, bcq_init="greedy"))
            for n in (0, 1, 2, 5, 10, 20)]
    assert all(a >= b for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 0.95 * errs[0], errs


def test_one_plane_is_the_closed_form():
    w = _weight(cols=200)
    cfg = QuantConfig(method="bcq", bits=1, group_size=64, scale_dtype="float32")
    alpha, binary, _ = bcq_fit(w, cfg)
    groups = torch.nn.functional.pad(w.abs(), (0, 56)).view(16, 4, 64)
    expected = groups.sum(-1) / torch.tensor([64, 64, 64, 8])
    assert torch.allclose(alpha[0], expected, rtol=1e-5)
    assert torch.equal(binary[0], torch.where(w >= 0, 1, -1).to(torch.int8))


def _hadamard(n):
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    return h                                                                             # [n, n], rows orthogonal


@pytest.mark.parametrize("q, codes", [(1, "random"), (2, "random"), (3, "orthogonal"), (4, "orthogonal")])
def test_exact_bcq_matrix_is_recovered(q, codes):
    g = torch.Generator().manual_seed(q)
    out, n_groups, group = 8, 3, 32
    base = 1 + torch.rand(out, n_groups, generator=g)                                   # [out, G]
    alpha = torch.stack([base * 0.5 ** i for i in range(q)])                             # distinct, well separated
    if codes == "random":
        binary = torch.randint(0, 2, (q, out, n_groups * group), generator=g) * 2 - 1
    else:
        # Greedy + ALS is a local method: with random codes and q >= 3 some groups can settle in
        # a local minimum. Codes orthogonal within each group (rows of a Hadamard matrix, with a
        # random sign per weight) make the greedy start exact, so the fit must stay there.
        rows = torch.stack([torch.randperm(group, generator=g)[:q] for _ in range(out * n_groups)])
        planes = _hadamard(group)[rows]                                                  # [out*G, q, group]
        planes = planes * (torch.randint(0, 2, (out * n_groups, 1, group), generator=g) * 2 - 1)
        binary = planes.view(out, n_groups, q, group).permute(2, 0, 1, 3).reshape(q, out, -1)
    binary = binary.to(torch.int8)
    w = bcq_dequantize(alpha, binary, group)
    cfg = QuantConfig(method="bcq", bits=q, group_size=group, scale_dtype="float32", bcq_init="greedy")
    fit_alpha, fit_binary, _ = bcq_fit(w, cfg)
    assert torch.allclose(bcq_dequantize(fit_alpha, fit_binary, group), w, atol=1e-5)
    assert torch.allclose(fit_alpha, alpha, rtol=1e-5)
    assert torch.equal(fit_binary, binary)


def test_shorter_last_group_sees_only_its_columns():
    w = _weight(out=8, cols=40)
    w[:, 32:] *= 50                                      # the short group lives on a far wider range
    cfg = QuantConfig(method="bcq", bits=2, group_size=16)
    alpha, binary, _ = bcq_fit(w, cfg)
    assert alpha.shape == (2, 8, 3) and cfg.describe_groups(40) == "2x16+8"
    alone_alpha, alone_binary, _ = bcq_fit(w[:, 32:], cfg)  # 8 columns: one group of 8
    assert alone_alpha.shape == (2, 8, 1)
    assert torch.allclose(alpha[:, :, 2:], alone_alpha, rtol=1e-6)
    assert torch.equal(binary[:, :, 32:], alone_binary)
    # The padding did not pull the last scales down: they fit the wide columns.
    assert (alpha[0, :, 2] > 10 * alpha[0, :, :2].max(dim=1).values).all()


def test_channel_and_tensor_granularity():
    w = _weight(cols=100)
    for gran in ("channel", "tensor"):
        alpha, binary, _ = bcq_fit(w, QuantConfig(method="bcq", bits=2, granularity=gran))
        assert alpha.shape == (2, 16, 1) and binary.shape == (2, 16, 100)
    assert torch.all(alpha == alpha[:, :1])


def test_quantize_tiny_model_in_place(tiny_lm):
    model = copy.deepcopy(tiny_lm[0])
    plan = {"model.layers.0.mlp.down_proj": QuantConfig(method="bcq", bits=2, group_size=64),
            "model.layers.1.self_attn.q_proj": QuantConfig(method="bcq", bits=3, group_size=32)}
    report = bcq_quantize_model(model, plan)
    assert [r["module"] for r in report] == list(plan)
    assert all(isinstance(model.get_submodule(n), BCQLinear) for n in plan)
    assert [r["groups"] for r in report] == ["1x64+32", "1x32+16"]
    assert all(0 < r["rel_weight_error"] < 1 and r["time_s"] >= 0 for r in report)
    with torch.no_grad():
        logits = model(torch.randint(0, 64, (2, 10))).logits
    assert torch.isfinite(logits).all()


def test_bcq_linear_forward_and_alpha_tuning_step():
    torch.manual_seed(0)
    linear = nn.Linear(40, 12)
    cfg = QuantConfig(method="bcq", bits=3, group_size=16)
    layer = BCQLinear.from_linear(linear, cfg)
    assert "bits=3" in repr(layer) and "group_size=16" in repr(layer)
    x = torch.randn(5, 40)
    w_hat = bcq_dequantize(layer.alpha, layer.binary, 16)
    assert torch.allclose(layer(x), x @ w_hat.T + linear.bias, atol=1e-6)
    assert torch.equal(layer.weight, w_hat.detach())
    trainable = [n for n, p in layer.named_parameters() if p.requires_grad]
    assert trainable == ["alpha"]
    alpha0, binary0, bias0 = layer.alpha.detach().clone(), layer.binary.clone(), layer.bias.detach().clone()
    opt = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=0.1)
    loss = (layer(x) - torch.randn(5, 12, generator=torch.Generator().manual_seed(1))).pow(2).mean()
    loss.backward()
    opt.step()
    assert not torch.equal(layer.alpha.detach(), alpha0)
    assert torch.equal(layer.binary, binary0) and layer.binary.dtype == torch.int8
    assert torch.equal(layer.bias, bias0)


def test_bad_input():
    w = _weight()
    w[3, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        bcq_fit(w, QuantConfig(method="bcq", bits=2))
    with pytest.raises(ValueError, match="method='bcq'"):
        bcq_fit(_weight(), QuantConfig(bits=2))


def test_uniform_init_keeps_the_extremes_and_als_only_lowers_error():
    torch.manual_seed(0)
    w = torch.randn(64, 200)
    w[3, 7] = 12.0                                                                   # an outlier
    cfg0 = QuantConfig(method="bcq", bits=3, group_size=64, bcq_init="uniform", bcq_iters=0, scale_dtype="float32")
    alpha, binary, _ = bcq_fit(w, cfg0)
    w_hat = bcq_dequantize(alpha, binary, 64)
    assert alpha[:, 3, 0].sum() == pytest.approx(12.0, rel=1e-6)                     # top level = max |w|
    assert w_hat[3, 7] == pytest.approx(12.0, rel=1e-6)
    ratios = alpha[1:] / alpha[:-1]
    assert torch.allclose(ratios, torch.full_like(ratios, 2.0))                       # s, 2s, 4s
    # the symmetric uniform grid: levels s * {±1, ±3, ±5, ±7}
    s = alpha[0, 0, 0]
    levels = torch.unique(w_hat[0, :64] / s).round()
    assert set(levels.tolist()) <= {-7.0, -5.0, -3.0, -1.0, 1.0, 3.0, 5.0, 7.0}
    e0 = (w_hat - w).norm()
    a3, b3, _ = bcq_fit(w, QuantConfig(method="bcq", bits=3, group_size=64, bcq_init="uniform", bcq_iters=3))
    e3 = (bcq_dequantize(a3, b3, 64) - w).norm()
    assert e3 <= e0 * 1.001


def test_bcq_init_must_be_known():
    with pytest.raises(ValueError, match="bcq_init"):
        QuantConfig(method="bcq", bcq_init="random")


def _rtn_weight(w, bits, group):
    from workbench.quant import rtn_quantize_weight
    return rtn_quantize_weight(w, QuantConfig(bits=bits, group_size=group, scale_dtype="float32"))[0]


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_offset_uniform_init_is_rtns_grid(bits):
    """With an offset and no ALS round, BCQ's levels are RTN's asymmetric grid: the same weights."""
    w = _weight(out=8, cols=64, seed=bits)
    cfg = QuantConfig(method="bcq", bits=bits, group_size=32, bcq_offset=True, bcq_iters=0, scale_dtype="float32")
    alpha, binary, offset = bcq_fit(w, cfg)
    assert offset.shape == (8, 2)
    w_hat = bcq_dequantize(alpha, binary, 32, offset)
    rtn = _rtn_weight(w, bits, 32)
    step = (w.max() - w.min()) / (2 ** bits - 1)
    assert (w_hat - rtn).abs().max() < 1e-4 * step


def test_offset_puts_a_level_at_zero_and_the_symmetric_grid_has_none():
    from workbench.quant.bcq import bcq_levels
    w = _weight(out=8, cols=64, seed=3)
    for offset_on in (False, True):
        cfg = QuantConfig(method="bcq", bits=3, group_size=32, bcq_offset=offset_on, bcq_iters=0)
        alpha, _, offset = bcq_fit(w, cfg)
        levels = bcq_levels(alpha, offset)                                          # [out, G, 8]
        nearest_zero = levels.abs().amin(-1)
        smallest_step = alpha.amin(0)                                               # [out, G]
        if offset_on:
            assert (nearest_zero < 1e-2 * smallest_step).all()                      # zero up to fp16 rounding
        else:
            assert torch.allclose(nearest_zero, smallest_step)                      # ±α_1 - ... : no zero


def test_offset_als_never_hurts_and_fits_a_shifted_matrix():
    torch.manual_seed(0)
    q, out, cols, group = 2, 6, 32, 16
    alpha = torch.rand(q, out, cols // group) + 0.1
    codes = torch.randint(0, 2, (q, out, cols)).to(torch.int8) * 2 - 1
    offset = torch.randn(out, cols // group) * 3                                    # far from zero
    w = bcq_dequantize(alpha, codes, group, offset)
    plain = QuantConfig(method="bcq", bits=q, group_size=group, bcq_iters=20, scale_dtype="float32")
    shifted = QuantConfig(method="bcq", bits=q, group_size=group, bcq_iters=20, scale_dtype="float32",
                          bcq_offset=True, bcq_init="greedy")
    a, b, _ = bcq_fit(w, plain)
    e_plain = (bcq_dequantize(a, b, group) - w).norm()
    a, b, z = bcq_fit(w, shifted)
    assert (bcq_dequantize(a, b, group, z) - w).norm() < 0.5 * e_plain            # the shift costs the plain fit
    for iters in (0, 1, 3):
        cfg = QuantConfig(method="bcq", bits=3, group_size=16, bcq_offset=True, bcq_iters=iters)
        a, b, z = bcq_fit(_weight(), cfg)
        err = (bcq_dequantize(a, b, 16, z) - _weight()).norm()
        if iters:
            assert err <= previous * 1.0001
        previous = err


def test_bcq_linear_with_offset_matches_its_dense_weight():
    torch.manual_seed(1)
    linear = nn.Linear(48, 8, bias=True)
    cfg = QuantConfig(method="bcq", bits=3, group_size=16, bcq_offset=True)
    layer = BCQLinear.from_linear(linear, cfg)
    assert layer.offset.shape == (8, 3) and not layer.offset.requires_grad
    x = torch.randn(5, 48)
    assert torch.allclose(layer(x), nn.functional.linear(x, layer.weight, linear.bias), atol=1e-5)
    with pytest.raises(ValueError, match="bcq_offset"):
        QuantConfig(method="bcq", bcq_offset="yes")
