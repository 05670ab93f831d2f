import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from workbench import evaluate
from workbench.quantize import QuantConfig


def test_perplexity_sweep_caches_and_recomputes_on_change(tiny_lm, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path))
    model, tok, record = tiny_lm
    calls = []
    real = evaluate.perplexity
    monkeypatch.setattr(evaluate, "perplexity", lambda *a, **k: calls.append(1) or real(*a, **k))
    specs = {"base": None, "w4": QuantConfig(bits=4, group_size=16)}
    kw = dict(corpus="lee", seqlen=32, max_windows=2, progress=False)
    first = evaluate.perplexity_sweep(model, tok, record, specs, **kw)
    assert len(calls) == 2
    again = evaluate.perplexity_sweep(model, tok, record, specs, **kw)
    assert len(calls) == 2 and again.perplexity.tolist() == first.perplexity.tolist()
    evaluate.perplexity_sweep(model, tok, record, {"w4": QuantConfig(bits=4, group_size=8)}, **kw)
    evaluate.perplexity_sweep(model, tok, record, {"w4": QuantConfig(bits=4, group_size=16)}, **{**kw, "max_windows": 3})
    assert len(calls) == 4
    assert first.bits.tolist()[1] == 4 and first.quantized_modules.tolist() == [0, 14]
    assert first.perplexity[0] != first.perplexity[1]


def test_quantizer_explorer_redraws(tiny_lm):
    from workbench.widgets import quantizer_explorer, quantize_one

    box = quantizer_explorer(tiny_lm.model, group_size=16)
    layer_ctl, component_ctl = box.children[0].children
    bits_ctl, method_ctl = box.children[1].children
    assert "GPTQ" not in method_ctl.options  # needs Hessians
    for method in method_ctl.options:
        method_ctl.value = method
        bits_ctl.value = 2
    import matplotlib.pyplot as plt

    plt.close("all")
    component_ctl.value = "down"
    assert "down_proj" in plt.gcf().axes[0].get_title() and "W2" in plt.gcf().axes[0].get_title()
    w = tiny_lm.model.model.layers[0].mlp.up_proj.weight.detach()
    with pytest.raises(ValueError, match="Hessian"):
        quantize_one(w, "GPTQ", 3, 16)
    assert torch.isfinite(quantize_one(w, "BCQ", 2, 16)).all()


def test_plots_return_figures_and_save(tmp_path):
    import pandas as pd

    from workbench.plots import group_size_curve, perplexity_vs_bits, weight_histogram

    df = pd.DataFrame({"method": ["a", "a", "b", "b"], "bits": [4, 3, 4, 3], "perplexity": [30, 40, 31, 35],
                       "group_size": [32, 64, 32, 64]})
    fig = perplexity_vs_bits(df, baseline=29, path=tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000 and len(fig.axes[0].lines) == 3
    w = torch.randn(16, 32)
    weight_histogram(w, w.round(), path=tmp_path / "h.png")
    group_size_curve(df, hue="method", path=tmp_path / "g.png")
    assert (tmp_path / "h.png").exists() and (tmp_path / "g.png").exists()
