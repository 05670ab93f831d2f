"""Export a quantized model in a format other tools load: compressed-tensors' `pack-quantized`.

    from workbench.quant import QuantConfig, quantize_model
    from workbench.quant.export import export
    qmodel, _ = quantize_model(model, QuantConfig(bits=4, group_size=64, symmetric=True))
    export(qmodel, "smollm2-w4g64-ct", tokenizer)
    AutoModelForCausalLM.from_pretrained("smollm2-w4g64-ct")     # transformers + compressed-tensors

compressed-tensors (vLLM's and llm-compressor's format; transformers reads it with the
`compressed-tensors` package) stores each quantized linear as `weight_packed` (int32 words, the
codes of every row packed densely, 1 to 8 bits), `weight_scale` [out, n_groups] and
`weight_shape`, and a `quantization_config` in config.json naming each layer's scheme (bits,
symmetric, strategy: group / channel / tensor, group size). The packing is done by
compressed-tensors' own `PackedQuantizationCompressor`, so the files are what that library writes.

What this grid holds that the format cannot, each an error that names the module and the way out
(the workbench's own `save_quantized` keeps all of them):
- an asymmetric grid (a zero point per group): compressed-tensors packs such zero points, but the
  parameters it creates when transformers loads the checkpoint are unpacked (compressed-tensors
  0.20.1, transformers 5.23: a size mismatch), so only symmetric grids round-trip;
- a last group shorter than the others (576 inputs at group 128 are 4 x 128 + 64): the format's
  group strategy needs the group size to divide the row;
- AWQ's input-channel scales (they would have to be folded into the layer before), full-precision
  outliers, and binary-coding (BCQ) weights, which are not on a uniform grid.
The GPTQ checkpoint format (`qweight`/`qzeros`/`g_idx`) is not written: loading it in
transformers needs a GPTQ kernel package (gptqmodel) that this CPU-only environment does not have.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from torch import nn

from workbench.quant.grid import QuantizedWeight
from workbench.quant.packing import check_weights_only, write_folder

FORMATS = ("compressed-tensors",)


def _scheme_args(name: str, qw: QuantizedWeight, in_features: int):
    """compressed-tensors' QuantizationArgs for one module's grid, or a ValueError saying why not."""
    from compressed_tensors.quantization import QuantizationArgs

    cfg = qw.config
    why = None
    if qw.column_scale is not None:
        why = ("it carries AWQ's input-channel scales (Ŵ = Q(W diag(s)) / s), which the format can hold only "
               "once folded into the layer before; export an RTN or GPTQ model, or use save_quantized")
    elif qw.outlier_index is not None and qw.outlier_index.numel():
        why = "it keeps full-precision outliers outside the grid; quantize without outliers, or use save_quantized"
    elif not cfg.symmetric:
        why = ("its grid is asymmetric (a zero point per group), whose packed zero points do not load back through "
               "transformers with compressed-tensors 0.20.1; quantize with symmetric=True, or use save_quantized")
    elif cfg.granularity == "group" and in_features % cfg.group_len(in_features):
        g = cfg.group_len(in_features)
        fits = [d for d in (256, 128, 64, 32, 16) if in_features % d == 0]
        why = (f"its {in_features}-wide rows at group {g} end in a shorter group ({cfg.describe_groups(in_features)}), "
               f"which the format's group strategy cannot hold; use a group size that divides {in_features}"
               + (f" (e.g. {fits[0]})" if fits else ""))
    if why:
        raise ValueError(f"{name} cannot be exported as compressed-tensors: {why}")
    strategy = {"group": "group", "channel": "channel", "tensor": "tensor"}[cfg.granularity]
    return QuantizationArgs(num_bits=cfg.bits, type="int", symmetric=True, strategy=strategy,
                            group_size=cfg.group_len(in_features) if strategy == "group" else None)


def _compressed_tensors(model: nn.Module, state: dict) -> tuple[dict, dict]:
    """(state dict with each quantized linear packed, quantization_config) for `model`."""
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme

    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if tied and head is not None:
        for k in [k for k in tensors if k.endswith(".weight") and model.get_submodule(k[:-7]) is head]:
            tensors.pop(k)                                            # tied: stored once, as the embedding
    groups: dict[str, tuple] = {}
    for name, qw in state.items():
        if not isinstance(qw, QuantizedWeight):
            raise ValueError(f"{name} cannot be exported as compressed-tensors: it is a "
                             f"{type(model.get_submodule(name)).__name__} with binary-coding (BCQ) weights, not on a "
                             "uniform grid; use save_quantized")
        w = tensors.pop(f"{name}.weight")
        args = _scheme_args(name, qw, w.shape[1])
        key = json.dumps(args.model_dump(mode="json"), sort_keys=True)
        groups.setdefault(key, (args, []))[1].append(name)
        scale = qw.scale.float()
        if qw.config.granularity == "tensor":
            scale = scale[:1, :1].reshape(1)                          # one scale for the matrix
        local = {"weight": w.float(), "weight_scale": scale.to(w.dtype)}
        packed = PackedQuantizationCompressor.compress(local, QuantizationScheme(targets=[name], weights=args))
        tensors.update({f"{name}.{k}": v.contiguous() for k, v in packed.items()})
    schemes = {f"group_{i}": QuantizationScheme(targets=names, weights=args)
               for i, (args, names) in enumerate(groups.values())}
    ignore = sorted(n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in state)
    config = QuantizationConfig(config_groups=schemes, format="pack-quantized", quantization_status="compressed",
                                ignore=ignore)
    return tensors, config.model_dump(mode="json")


@torch.no_grad()
def export(qmodel: nn.Module, folder: str | os.PathLike, tokenizer=None, format: str = "compressed-tensors") -> Path:
    """Write `qmodel` (from `quantize_model`) to `folder` in `format`, loadable with
    `AutoModelForCausalLM.from_pretrained(folder)`; returns the folder.

    Every quantized linear (`qmodel.quant_state`) is stored packed with its scales; the rest of
    the model as it is, in its dtype. A module whose grid the format cannot hold is an error
    naming it and the way out (see the module doc). The folder is written beside its target and
    renamed into place, so a failed export leaves any previous one whole.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; available: {', '.join(FORMATS)} (the GPTQ format is "
                         "not written; `save_quantized` writes the workbench's own packed format for any grid)")
    state = getattr(qmodel, "quant_state", None)
    if not state:
        raise ValueError("the model has no quant_state: export a model returned by quantize_model")
    check_weights_only(qmodel, "export")
    if not hasattr(qmodel, "config") or not hasattr(qmodel.config, "to_dict"):
        raise ValueError(f"a {type(qmodel).__name__} has no transformers config to write; export a transformers model")
    from safetensors.torch import save_file

    tensors, quantization_config = _compressed_tensors(qmodel, state)

    def write(tmp: Path) -> None:
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        config = copy.deepcopy(qmodel.config)
        config.quantization_config = quantization_config
        config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)

    return write_folder(Path(folder), write)
