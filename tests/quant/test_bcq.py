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
    alpha, binary = bcq_fit(w, config)
    w_hat = bcq_dequantize(alpha, binary, config.group_len(w.shape[1]))
    return (torch.linalg.norm(w - w_hat) / torch.linalg.norm(w)).item()


def test_shapes_and_dtypes():
    w = _weight(cols=576)
    alpha, binary = bcq_fit(w, QuantConfig(method="bcq", bits=3, group_size=128))
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
    alpha, binary = bcq_fit(w, cfg)
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
    fit_alpha, fit_binary = bcq_fit(w, cfg)
    assert torch.allclose(bcq_dequantize(fit_alpha, fit_binary, group), w, atol=1e-5)
    assert torch.allclose(fit_alpha, alpha, rtol=1e-5)
    assert torch.equal(fit_binary, binary)


def test_shorter_last_group_sees_only_its_columns():
    w = _weight(out=8, cols=40)
    w[:, 32:] *= 50                                      # the short group lives on a far wider range
    cfg = QuantConfig(method="bcq", bits=2, group_size=16)
    alpha, binary = bcq_fit(w, cfg)
    assert alpha.shape == (2, 8, 3) and cfg.describe_groups(40) == "2x16+8"
    alone_alpha, alone_binary = bcq_fit(w[:, 32:], cfg)  # 8 columns: one group of 8
    assert alone_alpha.shape == (2, 8, 1)
    assert torch.allclose(alpha[:, :, 2:], alone_alpha, rtol=1e-6)
    assert torch.equal(binary[:, :, 32:], alone_binary)
    # The padding did not pull the last scales down: they fit the wide columns.
    assert (alpha[0, :, 2] > 10 * alpha[0, :, :2].max(dim=1).values).all()


def test_channel_and_tensor_granularity():
    w = _weight(cols=100)
    for gran in ("channel", "tensor"):
        alpha, binary = bcq_fit(w, QuantConfig(method="bcq", bits=2, granularity=gran))
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
    alpha, binary = bcq_fit(w, cfg0)
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
    e3 = (bcq_dequantize(*bcq_fit(w, QuantConfig(method="bcq", bits=3, group_size=64, bcq_init="uniform",
                                                bcq_iters=3)), 64) - w).norm()
    assert e3 <= e0 * 1.001


def test_bcq_init_must_be_known():
    with pytest.raises(ValueError, match="bcq_init"):
        QuantConfig(method="bcq", bcq_init="random")
