"""KV-cache quantization: what attention reads is rounded, generation with and without the cache
agrees, lm-eval's generation runs through it, and the W x A x KV specs build and key it."""

import pytest
import torch

from workbench import abilities
from workbench.quant import (ActQuantConfig, KVQuantConfig, QuantConfig, precision_spec, quantize_for_spec,
                             quantize_kv_cache, remove_kv_quantization, save_quantized, spec_from_json, spec_to_json)
from workbench.quant.kv_cache import kv_attention


def _ids(seed=0, n=2, t=24):
    return torch.randint(2, 64, (n, t), generator=torch.Generator().manual_seed(seed))


def test_attention_reads_rounded_keys_and_values(tiny_lm, monkeypatch):
    seen = []
    from workbench.quant import kv_cache

    real = kv_cache._inner_function
    monkeypatch.setattr(kv_cache, "_inner_function",
                        lambda m, inner: (lambda mod, q, k, v, *a, **kw: seen.append((k, v)) or real(m, inner)(mod, q, k, v, *a, **kw)))
    q = quantize_kv_cache(tiny_lm.model, KVQuantConfig(bits=2))
    assert tiny_lm.model.config._attn_implementation == "sdpa"               # the original keeps its attention
    with torch.no_grad():
        q(_ids())
    k, v = seen[0]                                                           # [batch, kv_heads, tokens, head_dim]
    assert k.shape[1] == 2 and max(len(torch.unique(r)) for r in k.reshape(-1, k.shape[-1])) <= 4
    assert max(len(torch.unique(r)) for r in v.reshape(-1, v.shape[-1])) <= 4


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_a_growing_cache_gives_what_one_pass_gives(tiny_lm, bits):
    q = quantize_kv_cache(tiny_lm.model, KVQuantConfig(bits=bits, group_size=6))
    ids = _ids(1, n=1, t=16)
    with torch.no_grad():
        full = q(ids).logits[0, -4:]
        out = q(ids[:, :12], use_cache=True)
        past, steps = out.past_key_values, []
        for t in range(12, 16):
            o = q(ids[:, t:t + 1], past_key_values=past, use_cache=True)
            past, steps = o.past_key_values, steps + [o.logits[0, -1]]
        base = tiny_lm.model(ids).logits[0, -4:]
    torch.testing.assert_close(torch.stack(steps), full, rtol=0, atol=1e-4)
    assert (full - base).abs().max() > (1e-4 if bits == 8 else 1e-3)         # the rounding did something
    g1 = q.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True)
    g2 = q.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(g1, g2)


def test_error_grows_as_bits_fall_and_removal_restores_the_model(tiny_lm):
    ids = _ids(2)
    with torch.no_grad():
        base = tiny_lm.model(ids).logits
        errs = [(quantize_kv_cache(tiny_lm.model, KVQuantConfig(bits=b))(ids).logits - base).norm().item() for b in (8, 4, 2)]
        assert errs[0] < errs[1] < errs[2]
        q = quantize_kv_cache(tiny_lm.model, KVQuantConfig(bits=4))
        remove_kv_quantization(q)
        torch.testing.assert_close(q(ids).logits, base, rtol=0, atol=0)
    assert q.config._attn_implementation == "sdpa" and q.runtime_quant == {}


def test_bad_settings_and_models_are_clear_errors(tiny_lm):
    with pytest.raises(ValueError, match="2..8"):
        KVQuantConfig(bits=1)
    q = quantize_kv_cache(tiny_lm.model, KVQuantConfig(bits=4, group_size=5))
    with pytest.raises(ValueError, match="does not divide this model's head_dim 12"):
        with torch.no_grad():
            q(_ids())
    with pytest.raises(ValueError, match="attention interface"):
        quantize_kv_cache(torch.nn.Sequential(torch.nn.Linear(4, 4)), KVQuantConfig())
    with pytest.raises(TypeError, match="KVQuantConfig"):
        quantize_kv_cache(tiny_lm.model, QuantConfig())
    assert kv_attention.__doc__


def test_precision_labels_build_specs_that_survive_json():
    spec = precision_spec("W4A8KV4", group_size=16)
    assert spec["weights"].bits == 4 and spec["activations"].bits == 8 and spec["kv"].bits == 4
    assert spec_from_json(spec_to_json(spec)) == spec
    assert precision_spec("W16") is None and precision_spec("w8a8")["kv"] is None
    assert precision_spec("W16KV2")["weights"] is None and precision_spec("W4")["activations"] is None
    assert precision_spec("W16A8", smooth_alpha=0.5)["activations"].smooth_alpha == 0.5
    assert precision_spec("W3", method="gptq")["weights"].act_order is True
    for bad in ("W4A8KV", "A8", "W4 A8", 4):
        with pytest.raises(ValueError, match="W<bits>"):
            precision_spec(bad)


def test_a_spec_quantizes_all_three_and_checkpoints_refuse_runtime_rounding(tiny_lm, tmp_path):
    q, report = quantize_for_spec(tiny_lm.model, precision_spec("W4A8KV4", group_size=16))
    assert len(report) == 14 and set(q.runtime_quant) == {"activations", "kv"}
    assert abilities.model_fingerprint(q) != abilities.model_fingerprint(
        quantize_for_spec(tiny_lm.model, precision_spec("W4", group_size=16))[0])      # caches tell them apart
    with pytest.raises(ValueError, match="weights only"):
        save_quantized(q, tmp_path / "ckpt")
    with pytest.raises(ValueError, match="calibration"):
        quantize_for_spec(tiny_lm.model, precision_spec("W8A8", smooth_alpha=0.5))
    with pytest.raises(TypeError, match="ActQuantConfig"):
        quantize_for_spec(tiny_lm.model, {"weights": None, "activations": KVQuantConfig(), "kv": None})


def test_lm_eval_generation_runs_through_the_rounded_cache(tiny_lm, monkeypatch):
    from workbench.quant import kv_cache

    calls = []
    real = kv_cache._inner_function
    monkeypatch.setattr(kv_cache, "_inner_function", lambda m, inner: calls.append(1) or real(m, inner))
    spec = precision_spec("W16A8KV2")
    q, _ = quantize_for_spec(tiny_lm.model, spec)
    res = abilities.evaluate_tasks(q, tiny_lm.tokenizer, ["wb_icl_arith_1d_add"], limit=4, batch_size=2,
                                   max_gen_toks=4, cache=False, progress=False)
    assert len(res.samples) == 4 and res.samples.response.notna().all()
    # 2 layers x (one prompt pass + a step per generated token) per batch: the cache path ran
    assert len(calls) >= 2 * 2 * 2
    assert abilities._spec_bits(spec) == 16 and abilities._spec_method(precision_spec("W3A8")) == "rtn"
    assert ActQuantConfig().bits == 8


# ----------------------------------------------------------------------------- KIVI: per-channel keys, a residual

KIVI = KVQuantConfig(bits=2, group_size=6, key_axis="channel", token_group=4, residual=8)


def _asym(x, bits):
    """x rounded to 2^bits levels from its min to its max along the last dimension (written out here)."""
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    scale = ((hi - lo) / (2 ** bits - 1)).clamp(min=1e-8)
    return ((x - lo) / scale).round().clamp(0, 2 ** bits - 1) * scale + lo


def test_kivi_attention_is_a_loop_over_queries_reading_complete_chunks_rounded():
    """Each query t, computed alone: keys of the chunks of `residual` tokens that end at or before t
    rounded per channel over groups of token_group tokens, values per token; the rest full precision."""
    g = torch.Generator().manual_seed(3)
    T, d = 21, 12
    q, k, v = (torch.randn(1, 2, T, d, generator=g) for _ in range(3))
    k[..., 3] += 6.0                                                          # an outlier channel, as KIVI sees
    cfg = KVQuantConfig(bits=2, group_size=None, key_axis="channel", token_group=4, residual=8)
    module = torch.nn.Module()
    module.kv_quant, module.kv_inner, module.is_causal = cfg, "sdpa", True
    out = kv_attention(module, q, k, v, None, scaling=d ** -0.5)[0]           # [1, T, heads, d]
    for t in range(T):
        done = (t + 1) // 8 * 8                                               # tokens in chunks complete at t
        kt, vt = k[:, :, :t + 1].clone(), v[:, :, :t + 1].clone()
        for s in range(0, done, 4):                                           # groups of 4 tokens, per channel
            kt[:, :, s:s + 4] = _asym(kt[:, :, s:s + 4].transpose(-1, -2), 2).transpose(-1, -2)
        vt[:, :, :done] = _asym(vt[:, :, :done], 2)
        w = torch.softmax(q[:, :, t:t + 1] @ kt.transpose(-1, -2) * d ** -0.5, dim=-1)
        torch.testing.assert_close(out[:, t], (w @ vt)[:, :, 0], rtol=0, atol=1e-5)


def test_kivi_growing_cache_gives_what_one_pass_gives_and_left_padding_moves_nothing(tiny_lm):
    q = quantize_kv_cache(tiny_lm.model, KIVI)
    ids = _ids(4, n=1, t=22)
    with torch.no_grad():
        full = q(ids).logits[0]
        out = q(ids[:, :13], use_cache=True)
        past, steps = out.past_key_values, []
        for t in range(13, 22):                                               # across a chunk's completion at 16
            o = q(ids[:, t:t + 1], past_key_values=past, use_cache=True)
            past, steps = o.past_key_values, steps + [o.logits[0, -1]]
        torch.testing.assert_close(torch.stack(steps), full[13:], rtol=0, atol=1e-4)
        base = tiny_lm.model(ids).logits[0]
        torch.testing.assert_close(full[:7], base[:7], rtol=0, atol=1e-5)      # before the first chunk: nothing rounded
        assert (full[8:] - base[8:]).abs().max() > 1e-3                       # after it: the rounding shows
        pad = 5                                                                # the same row, left-padded in a batch
        batch = torch.cat([torch.full((1, pad), 1), ids], 1).repeat(2, 1)
        batch[1, :pad] = ids[0, -pad:]
        mask = torch.ones_like(batch)
        mask[0, :pad] = 0
        padded = q(batch, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[0, pad:]
        torch.testing.assert_close(padded, full, rtol=0, atol=1e-4)
    g1 = q.generate(ids[:, :10], max_new_tokens=12, do_sample=False, use_cache=True)
    g2 = q.generate(ids[:, :10], max_new_tokens=12, do_sample=False, use_cache=False)
    assert torch.equal(g1, g2)
    eager = quantize_kv_cache(tiny_lm.model.set_attn_implementation("eager") or tiny_lm.model, KIVI)
    try:
        with torch.no_grad():
            torch.testing.assert_close(eager(ids).logits[0], full, rtol=0, atol=1e-4)   # eager's additive mask too
    finally:
        tiny_lm.model.set_attn_implementation("sdpa")


def test_kivi_settings_are_checked_and_old_configs_keep_their_json():
    assert KVQuantConfig(bits=4).to_json() == {"kv": {"bits": 4, "group_size": None, "symmetric": False,
                                                      "keys": True, "values": True}}   # stored keys unchanged
    assert KVQuantConfig.from_json(KIVI.to_json()) == KIVI and KIVI.to_json()["kv"]["key_axis"] == "channel"
    assert KVQuantConfig.from_json(KVQuantConfig(residual=64).to_json()).residual == 64
    spec = precision_spec("W4KV2", kv_group_size=6, kv_options={"key_axis": "channel", "token_group": 4, "residual": 8})
    assert spec["kv"] == KIVI and spec_from_json(spec_to_json(spec)) == spec
    with pytest.raises(ValueError, match="residual=128"):
        KVQuantConfig(key_axis="channel")                                     # no residual: a group needs its tokens
    with pytest.raises(ValueError, match="multiple of token_group"):
        KVQuantConfig(key_axis="channel", token_group=32, residual=48)
    with pytest.raises(ValueError, match="key_axis"):
        KVQuantConfig(key_axis="head")
    with pytest.raises(ValueError, match="residual must be a non-negative"):
        KVQuantConfig(residual=-1)
