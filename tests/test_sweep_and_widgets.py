import matplotlib

matplotlib.use("Agg")

import math

import pytest
import torch

from workbench import evaluate
from workbench.quant import QuantConfig


@pytest.mark.integration
def test_perplexity_sweep_stores_each_point_and_recomputes_on_change(tiny_lm, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path))
    model, tok, record = tiny_lm
    calls = []
    real = evaluate.window_nll
    monkeypatch.setattr(evaluate, "window_nll", lambda *a, **k: calls.append(1) or real(*a, **k))
    specs = {"base": None, "w4": QuantConfig(bits=4, group_size=16)}
    kw = dict(corpus="lee", seqlen=32, max_windows=2, progress=False)
    first = evaluate.perplexity_sweep(model, tok, record, specs, **kw)
    assert len(calls) == 2 and len(list((tmp_path / "experiments" / "perplexity").glob("*.json"))) == 2
    again = evaluate.perplexity_sweep(model, tok, record, specs, **kw)
    assert len(calls) == 2 and again.equals(first)
    evaluate.perplexity_sweep(model, tok, record, {"w4": QuantConfig(bits=4, group_size=8)}, **kw)
    evaluate.perplexity_sweep(model, tok, record, {"w4": QuantConfig(bits=4, group_size=16)}, **{**kw, "max_windows": 3})
    assert len(calls) == 4
    assert first.bits.tolist()[1] == 4 and first.quantized_modules.tolist() == [0, 14]
    assert first.perplexity[0] != first.perplexity[1] and first.tokens.tolist() == [64, 64]
    assert first.rel_weight_error.isna().tolist() == [True, False]
    # an interval over windows, the windows themselves for paired tests, and any window re-run alone
    assert first.windows.tolist() == [2, 2] and (first.low <= first.perplexity).all() and (first.perplexity <= first.high).all()
    table, windows = evaluate.perplexity_sweep(model, tok, record, specs, return_windows=True, **kw)
    assert table.equals(first) and len(calls) == 4
    assert windows.label.tolist() == ["base", "base", "w4", "w4"] and windows.window.tolist() == [0, 1, 0, 1]
    w4 = windows[windows.label == "w4"]
    assert first.perplexity[1] == pytest.approx(math.exp(w4.nll.sum() / w4.tokens.sum()), rel=1e-9)
    from workbench.experiments import read_sweep

    point = next(r["point"] for r in read_sweep("perplexity")
                 if r["point"]["spec"] is not None and r["point"]["max_windows"] == 2
                 and r["point"]["spec"].get("group_size") == 16)
    again = evaluate.rerun_windows(point, [1])
    assert [w["window"] for w in again] == [1] and again[0]["nll"] == pytest.approx(w4.nll.iloc[1], rel=1e-5)
    with pytest.raises(ValueError, match="outside the 2 windows"):
        evaluate.rerun_windows(point, [5])


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
    # with intervals: error bars per method, and the uniform-guessing line labelled with the vocabulary
    fig = perplexity_vs_bits(df.assign(low=df.perplexity * 0.9, high=df.perplexity * 1.1), baseline=29, uniform=49152)
    ax = fig.axes[0]
    assert len(ax.containers) == 2                                       # one errorbar container per method
    assert any("49,152" in t.get_text() for t in ax.get_legend().get_texts())


def test_interval_cells_reads_estimate_and_interval_per_cell():
    import pandas as pd

    from workbench.report import interval_cells

    long = pd.DataFrame({"label": ["base", "base", "W4", "W4"], "column": ["icl", "perplexity", "icl", "perplexity"],
                         "n": [300, 28, 300, 28], "estimate": [0.55, 29.21, 0.125, 36.4],
                         "low": [0.4, 28.0, 0.05, 35.0], "high": [0.69, 30.5, 0.2, 38.1]})
    wide = interval_cells(long)
    assert list(wide.index) == ["base", "W4"] and list(wide.columns) == ["icl (n=300)", "perplexity (n=28)"]
    assert wide.loc["base", "icl (n=300)"] == "0.55 [0.40, 0.69]" and wide.loc["W4", "perplexity (n=28)"] == "36.4 [35, 38.1]"


def _records():
    def rec(method, trainable, acc, bits=None, **extra):
        r = dict(method=method, trainable_params=trainable + 10, head_params=10, total_params=1000,
                 accuracy=acc, losses=[1.0, 0.5], time_s=1.0, **extra)
        return {**r, "bits": bits} if bits else r
    return {"probe": rec("head_only", 0, 0.5), "LoRA r2": rec("lora", 20, 0.6, r=2), "LoRA r8": rec("lora", 80, 0.7, r=8),
            "PQ W4": rec("prequant", 10, 0.55, bits=4, chosen={"a": 4, "b": 6}),
            "PQ W2": rec("prequant", 10, 0.4, bits=2, chosen={"a": 10, "b": 0})}


def test_adaptation_explorer_menus_follow_method_then_bits_then_budget():
    import matplotlib.pyplot as plt

    from workbench.widgets import adaptation_explorer

    box = adaptation_explorer(_records())
    method, bits = box.children[0].children
    budget, _, table = box.children[1:]
    assert list(method.options) == ["head_only", "lora", "prequant"]
    method.value = "lora"
    assert [v for _, v in bits.options] == [16]
    assert [v for _, v in budget.options] == ["LoRA r2", "LoRA r8"]           # by adapted parameters
    assert budget.options[0][0].startswith("20 adapted (2.00%)")
    budget.value = "LoRA r8"
    assert "LoRA r8" in plt.gcf().axes[0].get_title() and "<td>r</td><td>8</td>" in table.value
    method.value = "prequant"
    assert [v for _, v in bits.options] == [4, 2]
    bits.value = 2
    assert budget.value == "PQ W2" and ">a<" in table.value and ">b<" not in table.value   # modules it trained
    plt.close("all")


def test_accuracy_vs_params_joins_the_budgets_of_a_method():
    from workbench.adapt import results_table
    from workbench.plots import accuracy_vs_params

    records = _records()
    records["DSEE"] = {**records["LoRA r2"], "method": "dsee"}
    records["DSEE pruned"] = {**records["LoRA r2"], "method": "dsee", "accuracy": 0.3}   # same budget: no line
    fig = accuracy_vs_params(results_table(records), baseline=0.5)
    assert len(fig.axes[0].lines) == 2                                        # LoRA's two budgets + the baseline
    assert len(fig.axes[0].texts) == len(records)                             # each run labelled (<= 12 runs)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()][:3] == ["head_only", "lora", "prequant"]


def test_frequency_bits_explorer_redraws_and_reports_a_bad_width(tiny_lm, capsys):
    import matplotlib.pyplot as plt

    from workbench.widgets import frequency_bits_explorer

    model = tiny_lm.model
    vocab = model.get_input_embeddings().weight.shape[0]
    freq = torch.arange(vocab, 0, -1)                         # token 0 the most frequent
    box = frequency_bits_explorer(model, freq, group_size=16)
    avg, rule, smoothing = box.children[0].children
    for r, expected in (("random", "random"), ("uniform", "uniform"), ("frequency", "frequency")):
        plt.close("all")
        rule.value = r
        ax = plt.gcf().axes[0]
        assert ax.get_title().startswith(expected) and "mean 3 bits" in ax.get_title()
    plt.close("all")
    avg.value = 4.0
    widths = plt.gcf().axes[0].lines[0].get_ydata()            # by frequency rank: never rising
    assert (widths[:-1] >= widths[1:]).all() and widths.max() > widths.min()
    rule.value = "uniform"
    avg.value = 2.5                                           # no uniform table at a fractional width
    assert "integer width" in capsys.readouterr().out


def test_mpo_explorer_shows_error_falling_with_the_bond_and_zero_at_full_bond(tiny_lm):
    import matplotlib.pyplot as plt

    from workbench.widgets import mpo_explorer

    box = mpo_explorer(tiny_lm.model, bonds=(1, 2, 4, 1024))
    name, parts, bond = box.children[0].children
    curve = plt.gcf().axes[0].lines[0]
    errors = curve.get_ydata()
    assert (errors[:-1] >= errors[1:] - 1e-9).all() and errors[0] > 0.1   # a larger bond never loses
    assert errors[-1] < 1e-5                                               # 1024 >= every full bond: exact
    plt.close("all")
    bond.value = 1024
    assert "error 0.000" in plt.gcf().axes[0].get_title()
    plt.close("all")
    parts.value = 2
    assert "central tensor" in plt.gcf().axes[0].get_title()
