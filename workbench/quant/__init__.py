"""Weight quantization: the grid, one file per method, a registry, the model loop, packed checkpoints.

    from workbench.quant import QuantConfig, quantize_model, save_quantized, load_quantized
    qmodel, report = quantize_model(model, QuantConfig(bits=4, group_size=128))            # RTN
    qmodel, report = quantize_model(model, QuantConfig(bits=3, method="gptq"), calibration=calib)  # a GPTQConfig
    save_quantized(qmodel, "smollm2-w4g128", tokenizer)                                   # real 4-bit files

    grid.py      QuantConfig (the grid's settings, which every method reads) and the primitives:
                 choose_qparams, quantize, dequantize, QuantizedWeight, relative_output_error
    rtn.py       RTNConfig; round-to-nearest, with full-precision outliers (by weight or input channel)
    gptq.py      GPTQConfig; GPTQ (Frantar et al. 2023), block by block, act-order, static groups
    awq.py       AWQConfig, AWQGPTQConfig; activation-aware input-channel scales (Lin et al. 2024),
                 then RTN with searched ranges ("awq") or GPTQ ("awq_gptq")
    activations.py  ActQuantConfig; every linear's input rounded per token at run time (W4A8, W8A8),
                 SmoothQuant's migration first (smooth_scales, smooth)
    kv_cache.py  KVQuantConfig; keys and values rounded per token and head inside attention (KV8/4/2),
                 in every forward and every generation step
    signround.py SignRoundConfig; learned rounding and clipping trained block by block on the
                 block's output error (SignRound, Cheng et al. 2023; Intel's auto-round)
    bcq.py       BCQConfig; binary-coding quantization (AlphaTuning's format, optionally with an
                 offset per group) and BCQLinear
    by_frequency.py  per-word bits for the token embedding (FrequencyBits, a spec's "embeddings"
                 entry) and bits per block under a size budget
    registry.py  method name -> (config class, handler); `register_method` adds one
    model.py     resolve_spec, quantize_model (one loop over the registry), quantize_embeddings,
                 quantize_for_spec (component specs; W x A x KV specs, `precision_spec("W4A8KV4")`),
                 spec_to_json / spec_from_json (a spec as a sweep point's plain data)
    packing.py   bit-packed checkpoints: save_quantized, load_quantized, packed_size
    export.py    export(qmodel, folder): compressed-tensors' pack-quantized format, which transformers
                 and vLLM load (imported on its own: needs the `export` extra)
    compare.py   the same grid through hqq, quanto and torchao (imported on its own: optional deps)

Imports run one way: grid <- methods, activations, kv_cache <- model <- packing <- export; nothing here
imports a method from grid.
"""

from workbench.quant.grid import (QuantConfig, QuantizedWeight, choose_qparams, dequantize, quantize,
                                  relative_output_error)
from workbench.quant.registry import METHODS, QuantMethod, register_method
from workbench.quant.rtn import RTNConfig, as_rtn, fake_quantize, outlier_mask, rtn_quantize_weight
from workbench.quant.gptq import GPTQConfig
from workbench.quant.bcq import BCQConfig
from workbench.quant.awq import AWQConfig, AWQGPTQConfig
from workbench.quant.signround import SignRoundConfig
from workbench.quant.by_frequency import FrequencyBits
from workbench.quant.activations import ActQuantConfig, quantize_activations, remove_activation_quantization
from workbench.quant.kv_cache import KVQuantConfig, quantize_kv_cache, remove_kv_quantization
from workbench.quant.model import (DEFAULT_SKIP, Spec, precision_spec, quantize_embeddings, quantize_for_spec,
                                   quantize_model, resolve_spec, spec_from_json, spec_to_json)
from workbench.quant.packing import load_quantized, packed_size, save_quantized

__all__ = ["QuantConfig", "QuantizedWeight", "choose_qparams", "dequantize", "quantize", "relative_output_error",
           "METHODS", "QuantMethod", "register_method", "RTNConfig", "GPTQConfig", "BCQConfig", "AWQConfig", "AWQGPTQConfig", "SignRoundConfig", "as_rtn", "fake_quantize", "outlier_mask", "rtn_quantize_weight",
           "FrequencyBits", "ActQuantConfig", "quantize_activations", "remove_activation_quantization",
           "KVQuantConfig", "quantize_kv_cache", "remove_kv_quantization", "precision_spec", "DEFAULT_SKIP", "Spec", "quantize_embeddings", "quantize_for_spec", "quantize_model", "resolve_spec", "spec_from_json", "spec_to_json",
           "load_quantized", "packed_size", "save_quantized"]
