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
