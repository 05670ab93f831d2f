"""Interactive explorers for JupyterLab, built on ipywidgets.

    from workbench.widgets import quantizer_explorer
    quantizer_explorer(model, hessians=None)   # pick layer, component, bits, method

Each explorer recomputes only the one matrix it shows, so it reacts in well under a second for
RTN and in a second or two for GPTQ or BCQ on the default model.
"""

from __future__ import annotations

import ipywidgets as W
import matplotlib.pyplot as plt
import torch

from workbench.modules import linear_modules, module_info
from workbench.plots import weight_histogram
from workbench.quantize import QuantConfig, rtn_quantize_weight

EXPLORER_METHODS = {
    "RTN": dict(method="rtn"),
    "RTN + MSE clip": dict(method="rtn", mse_clip=True),
    "RTN, symmetric": dict(method="rtn", symmetric=True),
    "RTN + 1% outliers": dict(method="rtn", outlier_fraction=0.01),
    "BCQ": dict(method="bcq"),
    "GPTQ": dict(method="gptq"),
}


def quantize_one(w: torch.Tensor, method: str, bits: int, group_size: int,
                 hessian: torch.Tensor | None = None) -> torch.Tensor:
    """Dequantized weight of one matrix [out, in] under an explorer method name (see EXPLORER_METHODS)."""
    cfg = QuantConfig(bits=bits, group_size=group_size, **EXPLORER_METHODS[method])
    if cfg.method == "rtn":
        return rtn_quantize_weight(w, cfg)[0]
    if cfg.method == "bcq":
        from workbench.bcq import bcq_dequantize, bcq_fit

        alpha, binary = bcq_fit(w, cfg)
        return bcq_dequantize(alpha, binary, cfg.group_len(w.shape[1]))
    if hessian is None:
        raise ValueError("GPTQ needs the layer's Hessian: pass hessians=collect_hessians(model, names, calibration)")
    from workbench.gptq import gptq_quantize_weight

    return gptq_quantize_weight(w, hessian, cfg)[0]


def quantizer_explorer(model, hessians: dict[str, torch.Tensor] | None = None, group_size: int = 128):
    """Pick a layer, a component, a bit width and a method; see the weight histogram before and
    after quantization and the error. GPTQ is offered when `hessians` (module -> H) is given."""
    linears = linear_modules(model)
    by_key = {(module_info(n).layer, module_info(n).component): n for n in linears
              if module_info(n).layer is not None}
    layers = sorted({k[0] for k in by_key})
    components = [c for c in ("q", "k", "v", "o", "gate", "up", "down") if any(k[1] == c for k in by_key)]
    methods = [m for m in EXPLORER_METHODS if m != "GPTQ" or hessians]
    layer = W.IntSlider(value=layers[len(layers) // 2], min=layers[0], max=layers[-1], description="layer")
    component = W.Dropdown(options=components, value=components[0], description="component")
    bits = W.IntSlider(value=3, min=2, max=8, description="bits")
    method = W.Dropdown(options=methods, value="RTN", description="method")
    out = W.Output()

    def redraw(*_):
        name = by_key.get((layer.value, component.value))
        with out:
            out.clear_output(wait=True)
            if name is None:
                print(f"no {component.value} module in layer {layer.value}")
                return
            w = linears[name].weight.detach()
            w_hat = quantize_one(w, method.value, bits.value, group_size, (hessians or {}).get(name))
            weight_histogram(w, w_hat, title=f"{name} — {method.value} W{bits.value} g{group_size}")
            plt.show()

    for control in (layer, component, bits, method):
        control.observe(redraw, names="value")
    redraw()
    return W.VBox([W.HBox([layer, component]), W.HBox([bits, method]), out])
