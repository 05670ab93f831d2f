import copy

import pytest
import torch

from workbench.quant.gptq import (_block_output, _capture_block_inputs, _gram, collect_hessians, gptq_quantize_model,
                                  gptq_quantize_weight)
from workbench.quant.grid import relative_output_error, relative_output_errors
from workbench.quant import GPTQConfig, QuantConfig, choose_qparams, dequantize, fake_quantize, quantize, resolve_spec


def _correlated(n=512, cols=64, rank=6, out=32, seed=0):
    """Inputs X [n, cols] with a low-rank + noise covariance, H = X^T X, and a weight W [out, cols]."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, rank, generator=g) @ torch.randn(rank, cols, generator=g)   # [n, cols] rank 6
    X = X + 0.1 * torch.randn(n, cols, generator=g)
    return X, X.T @ X, torch.randn(out, cols, generator=g)


def _calibration(n=8, seqlen=32, seed=0):
    return torch.randint(0, 64, (n, seqlen), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cfg", [GPTQConfig(bits=3, group_size=16), GPTQConfig(bits=3, granularity="channel"),
                                 GPTQConfig(bits=3, group_size=16, act_order=True)])
def test_gptq_beats_rtn_on_correlated_inputs(cfg):
    X, H, W = _correlated()
    W_hat, _, _, info = gptq_quantize_weight(W, H, cfg)
    gptq = torch.linalg.norm(X @ (W - W_hat).T)
    rtn = torch.linalg.norm(X @ (W - fake_quantize(W, cfg)).T)
    assert gptq < 0.5 * rtn
    assert relative_output_error(W, W_hat, H) == pytest.approx((gptq / torch.linalg.norm(X @ W.T)).item(), rel=1e-3)
    both = relative_output_errors(W, [W_hat, fake_quantize(W, cfg), W], H)
    assert both[:2] == pytest.approx([(gptq / torch.linalg.norm(X @ W.T)).item(),
                                      (rtn / torch.linalg.norm(X @ W.T)).item()], rel=1e-3) and both[2] == 0
    assert info["damp"] == cfg.damp and info["damp_retries"] == 0


@pytest.mark.parametrize("cfg", [
    GPTQConfig(bits=4, group_size=16),
    GPTQConfig(bits=4, group_size=16, act_order=True),
    GPTQConfig(bits=4, group_size=16, static_groups=True),
    GPTQConfig(bits=4, group_size=16, act_order=True, static_groups=True),
    GPTQConfig(bits=3, group_size=16, symmetric=True),
    GPTQConfig(bits=4, group_size=16, block_size=12),           # groups start inside blocks and span two
    GPTQConfig(bits=4, group_size=16, mse_clip=True, round_zero=False, zero_in_range=False),
    GPTQConfig(bits=4, granularity="channel", act_order=True),
    GPTQConfig(bits=2, granularity="tensor"),
], ids=["plain", "act_order", "static", "act_order+static", "symmetric", "block12", "mse_clip", "channel", "tensor"])
def test_w_hat_lies_exactly_on_the_returned_grid(cfg):
    X, H, W = _correlated(cols=40)                                # 40 = 2 x 16 + 8: a shorter last group
    W_hat, scale, zero, info = gptq_quantize_weight(W, H, cfg)
    assert W_hat.shape == W.shape and W_hat.dtype == W.dtype and torch.isfinite(W_hat).all()
    assert scale.shape == zero.shape == ((32, 3) if cfg.granularity == "group" else (32, 1))
    codes = quantize(W_hat, scale, zero, cfg)
    assert torch.equal(dequantize(codes, scale, zero, cfg), W_hat)
    if cfg.granularity == "tensor":
        assert torch.all(scale == scale[0, 0])
    if cfg.static_groups or cfg.act_order or cfg.granularity != "group":   # params fixed from the original W
        assert info["static_groups"] == (cfg.granularity == "group")
        s, z = choose_qparams(W, cfg)
        assert torch.equal(scale, s) and torch.equal(zero, z)
    if cfg.act_order and not cfg.static_groups and cfg.granularity == "group":
        assert "static_groups" in info["note"]
    else:
        assert info["note"] == ""


def test_block_size_does_not_change_the_result():
    _, H, W = _correlated(cols=40)
    a = gptq_quantize_weight(W, H, GPTQConfig(bits=3, group_size=16, block_size=128))
    b = gptq_quantize_weight(W, H, GPTQConfig(bits=3, group_size=16, block_size=12))
    assert torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])


def test_dead_inputs_are_zeroed():
    _, H, W = _correlated(cols=32)
    H[5, :], H[:, 5] = 0, 0
    W_hat, _, _, info = gptq_quantize_weight(W, H, GPTQConfig(bits=4, group_size=16))
    assert torch.isfinite(W_hat).all() and (W_hat[:, 5] == 0).all()
    assert info["dead_inputs"] == 1 and "never active" in info["note"]


def test_indefinite_hessian_is_retried_with_more_damping():
    _, H, W = _correlated(cols=32)
    evals, evecs = torch.linalg.eigh(H)
    evals[:3] = -0.05 * H.diagonal().mean()                       # fails at damp 0.01, passes at 0.1
    H = evecs @ torch.diag(evals) @ evecs.T
    H = (H + H.T) / 2
    assert torch.linalg.cholesky_ex(H + 0.01 * H.diagonal().mean() * torch.eye(32)).info != 0
    W_hat, scale, zero, info = gptq_quantize_weight(W, H, GPTQConfig(bits=4, group_size=16, damp=0.01))
    assert torch.isfinite(W_hat).all()
    assert info["damp_retries"] >= 1 and info["damp"] == pytest.approx(0.01 * 10 ** info["damp_retries"])
    assert "damp" in info["note"]


def test_hopeless_hessians_raise_clear_errors():
    _, H, W = _correlated(cols=32)
    bad = H.clone()
    bad[3, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        gptq_quantize_weight(W, bad, GPTQConfig(bits=4))
    evals, evecs = torch.linalg.eigh(H)
    evals[0] = -0.9 * evals.sum()                  # needs damp > 9 x 32 inputs: beyond the 4 retries (0.01 -> 100)
    with pytest.raises(ValueError, match="not positive definite.*calibrat.*damp"):
        gptq_quantize_weight(W, evecs @ torch.diag(evals) @ evecs.T, GPTQConfig(bits=4))
    with pytest.raises(ValueError, match="diagonal"):
        gptq_quantize_weight(W, -H, GPTQConfig(bits=4))
    with pytest.raises(ValueError, match=r"\[in, in\]"):
        gptq_quantize_weight(W, H[:10, :10], GPTQConfig(bits=4))


def _assert_no_hooks(model):
    for name, m in model.named_modules():
        assert not m._forward_hooks and not m._forward_pre_hooks, name
        assert "forward" not in m.__dict__, name


def test_collect_hessians(tiny_lm):
    model = tiny_lm.model
    calib = _calibration(n=5)
    name = "model.layers.1.mlp.down_proj"
    seen = []
    handle = model.get_submodule(name).register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, 96)))
    try:
        H, n = collect_hessians(model, [name, "model.layers.0.self_attn.q_proj"], calib, batch_size=2,
                                return_counts=True)
    finally:
        handle.remove()
    X = torch.cat(seen)                                           # [5 * 32, 96]
    assert n[name] == n["model.layers.0.self_attn.q_proj"] == 5 * 32
    assert H[name].shape == (96, 96) and H["model.layers.0.self_attn.q_proj"].shape == (48, 48)
    assert torch.allclose(H[name], 2 / X.shape[0] * X.T @ X, rtol=1e-4, atol=1e-6)
    assert torch.allclose(collect_hessians(model, [name], calib, batch_size=5)[name], H[name], rtol=1e-4, atol=1e-6)
    _assert_no_hooks(model)


def test_collect_hessians_stops_each_forward_after_its_last_module(tiny_lm):
    """After a first batch that calls every module once, later batches end at the last module:
    the LM head runs once, and the Hessians are what full forwards give."""
    model = tiny_lm.model
    head_calls = []
    handle = model.lm_head.register_forward_hook(lambda m, a, o: head_calls.append(1))
    try:
        H = collect_hessians(model, ["model.layers.0.mlp.down_proj"], _calibration(n=6), batch_size=2)
    finally:
        handle.remove()
    assert head_calls == [1]
    X = []
    handle = model.get_submodule("model.layers.0.mlp.down_proj").register_forward_hook(
        lambda m, a, o: X.append(a[0].reshape(-1, 96)))
    try:
        with torch.no_grad():
            model(_calibration(n=6))
    finally:
        handle.remove()
    X = torch.cat(X)
    assert torch.allclose(H["model.layers.0.mlp.down_proj"], 2 / X.shape[0] * X.T @ X, rtol=1e-4, atol=1e-6)
    _assert_no_hooks(model)


def test_collect_hessians_removes_hooks_when_forward_fails(tiny_lm):
    model = tiny_lm.model
    with pytest.raises(IndexError):
        collect_hessians(model, ["model.layers.0.mlp.up_proj"], torch.full((2, 8), 1000), batch_size=2)  # id >= vocab
    _assert_no_hooks(model)
    with pytest.raises(ValueError, match="nn.Linear"):
        collect_hessians(model, ["model.layers.0.mlp"], _calibration())


def test_gptq_quantize_model_on_tiny_lm(tiny_lm):
    model = copy.deepcopy(tiny_lm.model)
    calib = _calibration()
    plan = resolve_spec(model, QuantConfig(bits=4, group_size=16, method="gptq"))  # every linear but lm_head
    qparams, report = gptq_quantize_model(model, plan, calib, batch_size=3, progress=False)
    assert set(qparams) == set(plan) == {r["module"] for r in report} and len(plan) == 14
    for name, (scale, zero) in qparams.items():
        w = model.get_submodule(name).weight.data
        assert not torch.equal(w, tiny_lm.model.get_submodule(name).weight.data)
        assert torch.equal(dequantize(quantize(w, scale, zero, plan[name]), scale, zero, plan[name]), w)
    for row in report:
        assert {"module", "damp", "damp_retries", "note", "time_s", "rel_output_error",
                "rtn_rel_output_error"} <= set(row)
        assert row["n_tokens"] == 8 * 32 and row["damp_retries"] == 0
    better = sum(r["rel_output_error"] <= r["rtn_rel_output_error"] for r in report)
    assert better >= 0.8 * len(report)
    with torch.inference_mode():
        logits = model(input_ids=calib).logits
    assert torch.isfinite(logits).all()
    _assert_no_hooks(model)


@pytest.mark.parametrize("cfg", [QuantConfig(bits=3, group_size=16, method="gptq", act_order=True),
                                 QuantConfig(bits=3, group_size=16, method="gptq", mse_clip=True),
                                 QuantConfig(bits=3, granularity="tensor", method="gptq")],
                         ids=["act_order", "mse_clip", "tensor"])
def test_modules_reading_one_input_are_quantized_together_as_if_alone(tiny_lm, cfg):
    """q/k/v (and gate/up) are stacked into one GPTQ call; each must get what it gets alone."""
    model = copy.deepcopy(tiny_lm.model)
    names = [f"model.layers.0.self_attn.{p}_proj" for p in "qkvo"] + ["model.layers.0.mlp.gate_proj",
                                                                     "model.layers.0.mlp.up_proj"]
    H = collect_hessians(model, names, _calibration())           # block 0 sees the model's own inputs
    qparams, report = gptq_quantize_model(model, dict.fromkeys(names, cfg), _calibration(), progress=False)
    partners = {r["module"]: r["quantized_with"] for r in report}
    if cfg.granularity == "tensor":                               # one scale per matrix: never stacked
        assert set(partners.values()) == {""}
    else:
        assert partners["model.layers.0.self_attn.q_proj"] == ("model.layers.0.self_attn.k_proj, "
                                                               "model.layers.0.self_attn.v_proj")
        assert partners["model.layers.0.mlp.up_proj"] == "model.layers.0.mlp.gate_proj"
        assert partners["model.layers.0.self_attn.o_proj"] == ""
    for name in names:
        alone, scale, zero, _ = gptq_quantize_weight(tiny_lm.model.get_submodule(name).weight.data, H[name], cfg)
        together = model.get_submodule(name).weight.data
        codes_alone = quantize(alone, scale, zero, cfg)
        codes_together = quantize(together, *qparams[name], cfg)
        assert (codes_alone != codes_together).float().mean() < 0.01, name   # float summation order only
        assert torch.allclose(qparams[name][0], scale) and torch.allclose(qparams[name][1], zero)


def test_a_gptq_only_spec_runs_no_whole_model_calibration_pass(tiny_lm):
    """GPTQ replays the blocks alone; with no one-shot layer there is no output error to measure, so
    quantize_model runs no full forward (it used to run one for nothing: a third of GPTQ's time)."""
    from workbench.quant import quantize_model

    calls = []
    handle = tiny_lm.model.lm_head.register_forward_hook(lambda m, a, o: calls.append(1))
    try:
        q, report = quantize_model(tiny_lm.model, QuantConfig(bits=4, group_size=16, method="gptq"),
                                   calibration=_calibration(), progress=False)
    finally:
        handle.remove()
    assert calls == [] and len(report) == 14
    assert collect_hessians(tiny_lm.model, [], _calibration()) == {}


def test_gptq_quantize_model_leaves_unplanned_modules_alone(tiny_lm):
    original = tiny_lm.model
    model = copy.deepcopy(original)
    cfg = QuantConfig(bits=3, group_size=16, method="gptq")
    plan = {"model.layers.0.self_attn.v_proj": cfg, "model.layers.0.mlp.down_proj": cfg}
    qparams, report = gptq_quantize_model(model, plan, _calibration(), progress=False)
    assert set(qparams) == set(plan)
    before, after = original.state_dict(), model.state_dict()
    for key in before:
        changed = not torch.equal(before[key], after[key])
        assert changed == (key.removesuffix(".weight") in plan), key
    _assert_no_hooks(model)
    with pytest.raises(ValueError, match="method='gptq'"):
        gptq_quantize_model(model, {"model.layers.1.mlp.up_proj": QuantConfig(bits=4)}, _calibration())


def test_gptq_quantize_model_outside_blocks_fallback(tiny_lm):
    model = copy.deepcopy(tiny_lm.model)
    qparams, report = gptq_quantize_model(model, {"lm_head": QuantConfig(bits=4, group_size=16, method="gptq")},
                                          _calibration(), progress=False)
    assert set(qparams) == {"lm_head"} and report[0]["rel_output_error"] < report[0]["rtn_rel_output_error"]
    _assert_no_hooks(model)


@pytest.mark.parametrize("shape,blocks", [((40, 50), 4), ((9, 3), 4), ((30, 16), 1), ((30, 17), 3)])
def test_gram_is_x_transpose_x_from_the_upper_blocks(shape, blocks):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    G = _gram(x, blocks)
    assert torch.allclose(G, x.T @ x, rtol=1e-5, atol=1e-5)
    b = -(-shape[1] // blocks)
    assert torch.equal(G[:b, b:], G[b:, :b].T)                    # the lower blocks are the upper ones mirrored


def _true_sequential_by_hand(model, cfg, calib):
    """True-sequential GPTQ spelled out with the default mode: one gptq_quantize_model call per run
    of linears (q/k/v, o, gate/up, down of block 0, then block 1, ...), each on the model whose
    earlier runs are already quantized, so each Hessian comes from the quantized linears before it."""
    qparams = {}
    for layer in range(len(model.model.layers)):
        for run in (["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
                    ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]):
            plan = {f"model.layers.{layer}.{m}": cfg for m in run}
            qparams.update(gptq_quantize_model(model, plan, calib, progress=False)[0])
    return qparams


@pytest.mark.parametrize("arch,cfg", [("llama", GPTQConfig(bits=3, group_size=16, act_order=True)),
                                      ("llama", GPTQConfig(bits=3, granularity="tensor")),
                                      ("gemma3", GPTQConfig(bits=3, group_size=16, act_order=True))],
                         ids=["act_order", "tensor", "gemma3"])
def test_true_sequential_takes_each_hessian_from_the_quantized_linears_before_it(tiny_lm, arch, cfg):
    """One forward per block, quantizing each run of linears as the pass reaches it, equals doing
    it run by run with a full calibration pass each (up to float summation order); and it is not
    the default, whose Hessians all come from the full-precision block. Gemma-3's blocks take
    different masks (sliding window, global) and rotary tables."""
    calib = _calibration()
    original = tiny_lm.model if arch == "llama" else _tiny_gemma3()
    by_hand = copy.deepcopy(original)
    expected = _true_sequential_by_hand(by_hand, cfg, calib)
    one_pass = copy.deepcopy(original)
    ts = GPTQConfig(**{**cfg.to_json(), "true_sequential": True})
    qparams, report = gptq_quantize_model(one_pass, resolve_spec(one_pass, ts), calib, progress=False)
    assert set(qparams) == set(expected) and len(report) == 7 * len(original.model.layers)
    for name, (scale, zero) in qparams.items():
        codes = quantize(one_pass.get_submodule(name).weight.data, scale, zero, cfg)
        codes_by_hand = quantize(by_hand.get_submodule(name).weight.data, *expected[name], cfg)
        assert (codes != codes_by_hand).float().mean() < 0.01, name
        assert torch.allclose(scale, expected[name][0], rtol=1e-3)
    partners = {r["module"]: r["quantized_with"] for r in report}
    fused = cfg.granularity != "tensor"
    assert (partners["model.layers.1.self_attn.k_proj"] != "") == fused
    assert {r["n_tokens"] for r in report} == {calib.numel()}
    default = copy.deepcopy(original)
    gptq_quantize_model(default, resolve_spec(default, cfg), calib, progress=False)
    name = "model.layers.1.mlp.down_proj"                         # its Hessian differs between the two modes
    assert not torch.equal(default.get_submodule(name).weight, one_pass.get_submodule(name).weight)
    _assert_no_hooks(one_pass)


def test_true_sequential_returns_plain_tensors_and_fuses_awqs_divided_inputs(tiny_lm):
    """The pass runs in inference mode, but the scales and zeros it returns are ordinary tensors;
    AWQ + GPTQ divides each linear's input by its own copy of s, so q/k/v read equal tensors,
    not one: they are still quantized together."""
    from workbench.quant import quantize_model

    model = copy.deepcopy(tiny_lm.model)
    cfg = GPTQConfig(bits=4, group_size=16, true_sequential=True)
    qparams, _ = gptq_quantize_model(model, resolve_spec(model, cfg), _calibration(), progress=False)
    assert not any(t.is_inference() for qp in qparams.values() for t in qp)
    _, report = quantize_model(tiny_lm.model, QuantConfig(bits=4, group_size=16, method="awq_gptq",
                                                          true_sequential=True),
                               calibration=_calibration(), progress=False)
    partners = dict(zip(report.module, report.quantized_with))
    assert partners["model.layers.0.mlp.up_proj"] == "model.layers.0.mlp.gate_proj"


def test_true_sequential_refuses_blocks_it_cannot_replay(tiny_lm):
    """A linear called twice per forward, or never, is an error that names it and the way out."""
    from torch import nn

    cfg = GPTQConfig(bits=4, group_size=16, true_sequential=True)
    model = copy.deepcopy(tiny_lm.model)
    mlp = model.model.layers[0].mlp
    once = mlp.forward
    mlp.forward = lambda x: once(x) + 0 * once(x)                  # every MLP linear called twice
    with pytest.raises(ValueError, match=r"gate_proj is called more than once.*true_sequential=False"):
        gptq_quantize_model(model, resolve_spec(model, cfg), _calibration(), progress=False)
    _assert_no_hooks(mlp.gate_proj)
    model = copy.deepcopy(tiny_lm.model)
    model.model.layers[1].unused = nn.Linear(48, 48)               # planned, never called
    with pytest.raises(ValueError, match=r"layers.1.unused is planned but its block's forward never called it"):
        gptq_quantize_model(model, resolve_spec(model, cfg), _calibration(), progress=False)


def test_true_sequential_must_be_one_setting_for_the_plan(tiny_lm):
    model = copy.deepcopy(tiny_lm.model)
    plan = {"model.layers.0.self_attn.q_proj": GPTQConfig(bits=4, group_size=16, true_sequential=True),
            "model.layers.0.mlp.down_proj": GPTQConfig(bits=4, group_size=16)}
    with pytest.raises(ValueError, match="true_sequential must be the same"):
        gptq_quantize_model(model, plan, _calibration(), progress=False)
    with pytest.raises(TypeError, match="true_sequential must be True or False"):
        GPTQConfig(true_sequential="yes")
    assert "true_sequential" not in GPTQConfig().to_json()        # points stored before it keep their keys
    assert "true_sequential" not in QuantConfig(method="awq_gptq").to_json()    # a subclass's too
    assert QuantConfig.from_json(GPTQConfig(true_sequential=True).to_json()).true_sequential is True


def _tiny_gemma3():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=64, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=12, sliding_window=8,
                              max_position_embeddings=128,
                              layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    return Gemma3ForCausalLM(config).eval()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_block_inputs_replay_the_model(tiny_lm, arch):
    """Replaying the blocks on the captured inputs reproduces the model's own hidden states, also
    for Gemma-3, whose sliding-window and global layers get different masks and rotary tables."""
    # a copy: transformers records output_hidden_states through forward hooks it leaves on the model
    model = copy.deepcopy(tiny_lm.model) if arch == "llama" else _tiny_gemma3()
    calib = _calibration(n=5)
    hidden, extras = _capture_block_inputs(model, model.model.layers, calib, batch_size=2)
    _assert_no_hooks(model)
    with torch.inference_mode():
        expected = model(input_ids=calib, output_hidden_states=True, use_cache=False).hidden_states
        assert torch.equal(torch.cat(hidden), expected[0])
        for i, block in enumerate(model.model.layers[:-1]):
            hidden = [_block_output(block(x, *a, **kw)) for x, (a, kw) in zip(hidden, extras[i])]
            assert torch.allclose(torch.cat(hidden), expected[i + 1], atol=1e-5), i
