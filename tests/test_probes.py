"""Probes on small tensors with known answers, and on the tiny Llama."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from workbench import probes
from workbench.quant import QuantConfig, quantize_model


def test_stable_rank_known_answers():
    u, v = torch.randn(20, 1), torch.randn(1, 30)
    assert probes.stable_rank(u @ v) == pytest.approx(1.0, rel=1e-9)
    assert probes.stable_rank(torch.eye(17)) == pytest.approx(17.0, rel=1e-9)
    assert probes.stable_rank(torch.diag(torch.tensor([2.0, 1.0]))) == pytest.approx(1.25)
    assert probes.stable_rank(torch.zeros(3, 4)) == 0.0


def test_effective_rank_known_answers():
    assert probes.effective_rank(torch.eye(8)) == pytest.approx(8.0, rel=1e-9)
    assert probes.effective_rank(torch.randn(9, 1) @ torch.randn(1, 5)) == pytest.approx(1.0, rel=1e-6)
    # p = (2/3, 1/3): exp(H) between 1 and 2
    r = probes.effective_rank(torch.diag(torch.tensor([2.0, 1.0])))
    assert r == pytest.approx(np.exp(-(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3))))


def test_levels_per_block_sees_a_grid():
    torch.manual_seed(0)
    w = torch.randn(16, 128)
    assert probes.levels_per_block(w) == 32
    grid = torch.round(w * 2).clamp(-4, 3) / 2                                  # 8 levels
    assert probes.levels_per_block(grid) <= 8


def test_outlier_error_share_planted_outlier():
    torch.manual_seed(0)
    w = torch.randn(32, 128) * 0.02
    cfg = QuantConfig(bits=3, group_size=128)
    plain = probes.outlier_error_share(w, cfg, 0.01)
    w2 = w.clone()
    w2[:, 5] = 1.0                                                              # one huge input channel
    planted = probes.outlier_error_share(w2, cfg, 0.01)
    assert planted > 0.9 > plain
    assert 0 <= plain < 0.5


def _planted_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    with torch.no_grad():
        model[0].weight[:, 3] *= 50                                             # outlier input channel 3
    return model


def test_weight_stats_and_channel_max_find_planted_channel():
    model = _planted_model()
    ws = probes.weight_stats(model, config=QuantConfig(bits=4, group_size=16), progress=False)
    assert list(ws.module) == ["0", "2"]
    first = ws.set_index("module").loc["0"]
    assert first["kurtosis"] > ws.set_index("module").loc["2", "kurtosis"]
    assert first.max_over_std > 2.5
    ch = probes.weight_channel_max(model, pattern=None)
    top = ch[ch.module == "0"].sort_values("abs_max").iloc[-1]
    assert top.channel == 3 and top.ratio > 10


def test_weight_stats_gaussian_kurtosis():
    lin = nn.Linear(1000, 500)
    torch.manual_seed(0)
    with torch.no_grad():
        lin.weight.normal_()
    ws = probes.weight_stats(nn.Sequential(lin), progress=False)
    assert ws["kurtosis"][0] == pytest.approx(3.0, abs=0.05)
    assert ws.beyond_3sigma[0] == pytest.approx(0.0027, abs=0.0005)


def test_tied_head_reported_once(tiny_lm):
    ws = probes.weight_stats(tiny_lm.model, progress=False)
    assert "model.embed_tokens" in set(ws.module) and "lm_head" not in set(ws.module)
    assert set(ws.component) >= {"q", "k", "v", "o", "gate", "up", "down", "embed"}
    assert ws.layer.dropna().astype(int).tolist().count(0) == 7


def test_nan_weight_and_unmatched_pattern_errors():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="matches no"):
        probes.weight_stats(model, pattern="mlp", progress=False)
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        probes.spectra(model, progress=False)


class _Embed(nn.Module):
    """Token ids -> fixed hidden states with a planted outlier dimension, then two 'layers'."""

    def __init__(self, hidden=12, dim=7, value=20.0):
        super().__init__()
        self.hidden, self.dim, self.value = hidden, dim, value
        self.layers = nn.ModuleList([nn.ModuleDict(dict(q_proj=nn.Linear(hidden, hidden))) for _ in range(4)])
        self.fail = False

    def forward(self, input_ids):
        g = torch.Generator().manual_seed(int(input_ids.sum()))
        x = torch.randn(*input_ids.shape, self.hidden, generator=g)
        x[..., self.dim] = torch.where(input_ids % 10 == 0, self.value, 0.0)   # 10% of tokens
        for block in self.layers:
            x = block["q_proj"](x) * 0 + x
            if self.fail:
                raise RuntimeError("boom")
        return x


def test_activation_stats_and_outlier_feature_found():
    model = _Embed()
    calib = torch.arange(200).reshape(4, 50)
    per_module, per_channel = probes.activation_stats(model, calib, pattern=None, progress=False)
    assert len(per_module) == 4 and (per_module.tokens == 200).all()
    row = per_channel[(per_channel.module == "layers.0.q_proj") & (per_channel.channel == 7)].iloc[0]
    assert row.abs_max == pytest.approx(20.0) and row.share_over == pytest.approx(0.1)
    feats = probes.outlier_features(per_channel, hidden_size=12)
    assert feats.iloc[0].dim == 7 and feats.iloc[0].is_outlier_feature and feats.iloc[0].layers == 4
    assert feats[feats.is_outlier_feature].dim.tolist() == [7]
    stricter = probes.outlier_features(per_channel, hidden_size=12, token_share=0.2)
    assert not stricter.is_outlier_feature.any()
    with pytest.raises(ValueError, match="hidden_size"):
        probes.outlier_features(per_channel, hidden_size=99)


def test_hooks_removed_after_exception():
    model = _Embed()
    model.fail = True
    with pytest.raises(RuntimeError, match="boom"):
        probes.activation_stats(model, torch.arange(20).reshape(2, 10), pattern=None, progress=False)
    assert all(len(m._forward_pre_hooks) == 0 for m in model.modules())


def test_activation_stats_rejects_bad_calibration():
    with pytest.raises(ValueError, match="calibration_batch"):
        probes.activation_stats(_Embed(), torch.randn(2, 10), pattern=None, progress=False)


def test_fast_singular_values_match_the_svd():
    torch.manual_seed(0)
    for shape in [(300, 200), (64, 500)]:
        w = torch.randn(*shape) * torch.logspace(0, -2, shape[1])                     # decaying column scales
        exact, fast = probes.singular_values(w, exact=True), probes.singular_values(w)
        assert fast.shape == exact.shape == (min(shape),)
        assert (fast - exact).abs().max() < 1e-6 * exact[0]                          # a float64 Gram matrix
        assert probes.stable_rank(fast, True) == pytest.approx(probes.stable_rank(exact, True), rel=1e-8)
        assert probes.effective_rank(fast, True) == pytest.approx(probes.effective_rank(exact, True), rel=1e-6)


def test_spectra_and_quantization_on_tiny_lm(tiny_lm):
    sp = probes.spectra(tiny_lm.model, keep_singular_values=True, progress=False)
    row = sp.iloc[0]
    assert row.stable_rank == pytest.approx(float((row.singular_values ** 2).sum() / row.singular_values[0] ** 2),
                                            rel=1e-5)
    assert (sp.stable_rank >= 1).all() and (sp.stable_rank_ratio <= 1).all()
    sq = probes.spectra_under_quantization(tiny_lm.model, {"W8": QuantConfig(bits=8, group_size=16),
                                                           "W2": QuantConfig(bits=2, group_size=16)}, progress=False)
    assert set(sq.label) == {"W8", "W2"} and len(sq) == 2 * 14
    change = sq.groupby("label").stable_rank_change.apply(lambda s: s.abs().mean())
    assert change["W8"] < change["W2"]
    assert change["W8"] < 0.01


def test_relate_and_correlations(tiny_lm):
    cfg = QuantConfig(bits=3, group_size=16)
    ws = probes.weight_stats(tiny_lm.model, config=cfg, progress=False)
    _, report = quantize_model(tiny_lm.model, cfg, progress=False)
    rel = probes.relate(ws, report)
    assert len(rel) == 14 and "rel_weight_error" in rel
    c = probes.correlations(rel, ["rel_rtn_error", "kurtosis"], "rel_weight_error")
    assert c.set_index("x").loc["rel_rtn_error", "spearman"] == pytest.approx(1.0)   # same quantity
    with pytest.raises(ValueError, match="error columns"):
        probes.relate(ws, report[["module"]])


def test_probe_plots_return_figures_and_save(tiny_lm, tmp_path):
    import matplotlib.pyplot as plt

    from workbench.plots import layer_component_heatmap, scatter_trend, spectrum_plot, tail_histogram

    sp = probes.spectra(tiny_lm.model, keep_singular_values=True, progress=False)
    fig = layer_component_heatmap(sp, "stable_rank", fmt=".1f", path=tmp_path / "h.png")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["q", "k", "v", "o", "gate", "up", "down"]
    assert (tmp_path / "h.png").stat().st_size > 1000
    w = torch.randn(10000)
    w[:5] = 50
    fig = tail_histogram(w, k=6, path=tmp_path / "t.png")
    assert "beyond 6σ: 5 " in fig.axes[0].get_legend().get_texts()[0].get_text()
    fig = spectrum_plot({r.module: r.singular_values for r in sp.head(3).itertuples()}, path=tmp_path / "s.png")
    assert len(fig.axes[0].lines) == 3 and fig.axes[0].lines[0].get_ydata()[0] == 1.0
    fig = scatter_trend(sp, "stable_rank", "effective_rank", path=tmp_path / "c.png")
    assert "Spearman" in fig.axes[0].get_title() and (tmp_path / "c.png").exists()
    plt.close("all")


def test_outlier_and_stable_rank_explorers(tiny_lm):
    import matplotlib.pyplot as plt

    from workbench.widgets import outlier_explorer, stable_rank_explorer

    calib = torch.randint(0, 64, (2, 16))
    _, act_ch = probes.activation_stats(tiny_lm.model, calib, progress=False)
    box = outlier_explorer(tiny_lm.model, act_ch, group_size=16)
    layer_ctl, component_ctl = box.children[0].children
    bits_ctl, method_ctl = box.children[1].children
    plt.close("all")
    component_ctl.value = "q"
    fig = plt.gcf()
    assert len(fig.axes) == 3 and "q_proj" in fig.axes[0].get_title()
    assert "carry" in fig.axes[1].get_title()
    sp = probes.spectra(tiny_lm.model, progress=False)
    box = stable_rank_explorer(tiny_lm.model, sp)
    grid = box.children[0].children[1]
    buttons = [c for c in grid.children if hasattr(c, "on_click")]
    assert len(buttons) == 14
    plt.close("all")
    target = [b for b in buttons if b.tooltip == "model.layers.1.mlp.down_proj"][0]
    target.click()
    assert "model.layers.1.mlp.down_proj" in plt.gcf().axes[0].get_title()
    plt.close("all")


def test_group_bias_share_independent_errors_and_an_offset():
    torch.manual_seed(0)
    w = torch.randn(64, 256)
    noise = w + 0.01 * torch.randn_like(w)
    assert probes.group_bias_share(w, noise, 32) == pytest.approx(1 / 32, rel=0.25)
    assert probes.group_bias_share(w, w + 0.01, 32) == pytest.approx(1.0)      # every error the group's mean
    assert probes.group_bias_share(w, w, 32) == 0.0


def test_quantization_error_recovers_a_gguf_q4_1_grid(tiny_lm):
    """A matrix dequantized from GGUF's Q4_1 (per block of 32: d·q + m, q = 0..15 spanning the block)
    is re-quantized exactly by RTN with a real-valued zero at group 32, and not by an integer zero."""
    model = copy.deepcopy(tiny_lm.model)                           # the session's tiny model stays as saved
    name = "model.layers.0.mlp.down_proj"                          # [48, 96]: three blocks of 32 per row
    w = model.get_submodule(name).weight
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (48, 3, 32), generator=g)
    q[..., 0], q[..., 1] = 0, 15                                   # every block reaches both ends
    d = (torch.rand(48, 3, 1, generator=g) * 0.02 + 0.01).half().float()
    m = (-7.5 * d + 0.003 * torch.randn(48, 3, 1, generator=g)).half().float()
    with torch.no_grad():
        w.copy_((d * q + m).reshape(48, 96))
    specs = {"integer zero": QuantConfig(bits=4, group_size=32),
             "real zero": QuantConfig(bits=4, group_size=32, round_zero=False, zero_in_range=False)}
    err = probes.quantization_error(model, specs, torch.arange(120).reshape(4, 30) % 64, pattern="down_proj",
                                    progress=False)
    row = err[err.module == name].set_index("label")
    assert row.loc["real zero", "rel_weight_error"] < 2e-3
    assert row.loc["integer zero", "rel_weight_error"] > 0.01
    assert set(err.columns) >= {"module", "layer", "component", "label", "bits", "rel_weight_error",
                                "rel_output_error", "group_bias_share"}
    assert len(err) == 2 * 2 and (err.rel_output_error >= 0).all()
    with pytest.raises(ValueError, match="round-to-nearest"):
        probes.quantization_error(model, {"gptq": QuantConfig(bits=4, method="gptq")}, torch.zeros(2, 8, dtype=torch.long))


PROBE_CASES = {   # probe -> (specs, calibration, the direct call the stored table must equal)
    "quantization_error": ({"W4": QuantConfig(bits=4, group_size=16), "W3": QuantConfig(bits=3, group_size=16)}, True,
                           lambda m, s, c: probes.quantization_error(m, s, c, progress=False)),
    "quantize_report": ({"W3": QuantConfig(bits=3, group_size=16),
                         "W3 channels": QuantConfig(bits=3, group_size=16, outlier_fraction=0.05, outlier_mode="channel")},
                        True, None),
    "spectra_under_quantization": ({"W2": QuantConfig(bits=2, group_size=16)}, False,
                                   lambda m, s, c: probes.spectra_under_quantization(m, s, progress=False)),
    "activation_stats": (None, True, lambda m, s, c: probes.activation_stats(m, c, progress=False)[0]),
    "weight_stats": ({"W3": QuantConfig(bits=3, group_size=16)}, False,
                     lambda m, s, c: probes.weight_stats(m, config=s["W3"], progress=False)),
}


@pytest.mark.parametrize("probe", list(PROBE_CASES))
def test_probe_sweep_stores_a_table_and_reruns_any_matrix_alone(probe, tiny_lm_dir, tmp_path, monkeypatch):
    """A probe through the sweep engine gives the direct call's table, is read back instead of
    recomputed, and any matrix's rows re-run alone equal the stored ones (what make test samples)."""
    from workbench.data import calibration_batch
    from workbench.experiments import read_sweep
    from workbench.models import load_model

    tiny_lm = load_model(str(tiny_lm_dir))     # as saved: the rows are re-run from the saved weights

    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path))
    specs, calibrated, direct = PROBE_CASES[probe]
    calibration = {"corpus": "lee", "n_samples": 2, "seqlen": 16, "seed": 0} if calibrated else None
    calls = []
    real = probes.PROBES[probe]
    monkeypatch.setitem(probes.PROBES, probe, lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    table = probes.probe_sweep([tiny_lm], probe, specs, calibration, name="p", progress=False)
    again = probes.probe_sweep([tiny_lm], probe, specs, calibration, name="p", progress=False)
    assert calls == [None] and again.equals(table) and (table.model == tiny_lm.record.name).all()
    if direct is not None:
        calib = calibration_batch(tiny_lm.tokenizer, **calibration) if calibrated else None
        expected = direct(tiny_lm.model, specs, calib)
        pd.testing.assert_frame_equal(table.drop(columns="model"), expected, check_dtype=False)
    else:       # quantize_model's report for each spec, labelled, without its times
        calib = calibration_batch(tiny_lm.tokenizer, **calibration)
        _, report = quantize_model(tiny_lm.model, specs["W3 channels"], calib, progress=False)
        mine = table[table.label == "W3 channels"].drop(columns=["model", "label"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, report.drop(columns="time_s"), check_dtype=False)
        assert mine.rel_output_error.notna().all()
    (record,) = read_sweep("p")
    module = record["items"][-1]["module"]
    fresh = probes.rerun_probe_rows(record["point"], [module])
    stored = [r for r in record["items"] if r["module"] == module]
    assert calls[-1] == [module] and len(fresh) == len(stored) >= 1
    for f, s in zip(fresh, stored):
        assert f.keys() == s.keys()
        for k in s:
            assert f[k] == pytest.approx(s[k], rel=1e-5, nan_ok=True) if isinstance(s[k], float) else f[k] == s[k], k
    with pytest.raises(TypeError, match="got the string"):
        probes.rerun_probe_rows(record["point"], module)
    with pytest.raises(ValueError, match=r"no rows for \['model\.typo'\]"):
        probes.rerun_probe_rows(record["point"], [module, "model.typo"])


def test_probe_sweep_errors_name_the_fix(tiny_lm):
    with pytest.raises(ValueError, match="unknown probe 'spectrum'; choose one of"):
        probes.probe_sweep([tiny_lm], "spectrum")
    with pytest.raises(TypeError, match=r"got one: pass \[loaded\]"):
        probes.probe_sweep(tiny_lm, "weight_stats")
    with pytest.raises(ValueError, match=r"no option \['outlier_frac'\]; its options: \['outlier_fraction', 'pattern'\]"):
        probes.probe_sweep([tiny_lm], "weight_stats", options={"outlier_frac": 0.01})
    with pytest.raises(ValueError, match="one QuantConfig"):
        probes.PROBES["weight_stats"](tiny_lm.model, {"a": QuantConfig(), "b": QuantConfig()}, None, None)
    with pytest.raises(ValueError, match="quantize_report probe needs specs"):
        probes.PROBES["quantize_report"](tiny_lm.model, {}, None, None)
    with pytest.raises(ValueError, match="activation_stats probe needs calibration"):
        probes.PROBES["activation_stats"](tiny_lm.model, {}, None, None)
    point = {"model": tiny_lm.record.name, "probe": "weight_stats", "specs": {"W4": QuantConfig(group_size=16).to_json()},
             "weights": {"path": "sha256:something else"}}
    with pytest.raises(ValueError, match="not the ones the record was computed on"):
        probes.rerun_probe_rows(point, ["model.layers.0.mlp.up_proj"])
