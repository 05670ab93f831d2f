"""Plots read right: ticks that can be read, one colour per component across panels."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from workbench import plots  # noqa: E402


def test_group_size_axis_labels_only_the_measured_group_sizes():
    df = pd.DataFrame({"group_size": [32, 64, 128, 256, 576], "perplexity": [70.0, 90, 150, 250, 1000]})
    fig = plots.group_size_curve(df)
    ax = fig.axes[0]
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["32", "64", "128", "256", "576"]
    assert not [t for t in ax.get_xticklabels(minor=True) if t.get_text()]     # no overprinted 3×10¹, 6×10¹
    plt.close(fig)


def test_group_size_curve_draws_the_interval_as_error_bars_when_the_frame_has_one():
    df = pd.DataFrame({"group_size": [32, 64, 128], "perplexity": [70.0, 90, 150],
                       "low": [65.0, 84, 140], "high": [76.0, 97, 161]})
    fig = plots.group_size_curve(df)
    bars = fig.axes[0].containers
    assert len(bars) == 1                                            # one ErrorbarContainer
    segments = bars[0].lines[2][0].get_segments()                   # the vertical bar of each point
    assert [(seg[0][1], seg[1][1]) for seg in segments] == [(65.0, 76.0), (84.0, 97.0), (140.0, 161.0)]
    plt.close(fig)
    fig = plots.group_size_curve(df.drop(columns=["low", "high"]))  # no interval: a plain line
    assert not fig.axes[0].containers
    plt.close(fig)


def test_activation_depth_gives_a_component_one_colour_in_every_panel_and_one_legend(tmp_path):
    def frame(comps, layers=3):
        return pd.DataFrame([{"layer": l, "component": c, "abs_max": 1.0 + l + i}
                             for l in range(layers) for i, c in enumerate(comps)]
                            + [{"layer": None, "component": "head", "abs_max": 99.0}])
    fig = plots.activation_depth({"causal": frame(["q", "k", "v", "o", "gate", "up", "down"]),
                                  "encoder": frame(["q", "o", "up", "down", "extra"])},
                                 path=tmp_path / "depth.png")
    colour = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            if line.get_label().startswith("_"):
                continue                                   # the threshold line
            assert colour.setdefault(line.get_label(), line.get_color()) == line.get_color(), line.get_label()
    assert len(set(colour.values())) == len(colour) == 8                    # distinct, "head" (no layer) left out
    assert not any(ax.get_legend() for ax in fig.axes) and len(fig.legends) == 1
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["q", "k", "v", "o", "gate", "up", "down", "extra",
                                                                  "|x| = 6"]
    assert (tmp_path / "depth.png").stat().st_size > 0
    plt.close(fig)


def test_perplexity_vs_bits_draws_each_method_only_where_measured_and_into_a_given_panel():
    df = pd.DataFrame({"method": ["RTN"] * 3 + ["GPTQ"] * 2, "bits": [4, 3, 2, 4, 3],
                       "perplexity": [38.0, 138, 5e6, 35, 60], "low": [35.0, 127, 4e6, 32, 55],
                       "high": [41.0, 150, 6e6, 38, 65]})
    fig, axes = plt.subplots(1, 2)
    assert plots.perplexity_vs_bits(df, baseline=30.0, uniform=49152, ax=axes[1]) is fig
    drawn = {c.get_label(): list(c.lines[0].get_xdata()) for c in axes[1].containers}   # the error-bar lines
    assert drawn == {"RTN": [2, 3, 4], "GPTQ": [3, 4]}
    assert "uniform guessing (49,152)" in [ln.get_label() for ln in axes[1].get_lines()] and not axes[0].get_lines()
    assert [t.get_text() for t in axes[1].get_xticklabels()] == ["2", "3", "4"]
    plt.close(fig)


def test_abilities_vs_bits_joins_only_the_bit_widths_a_method_measured():
    rows = [("base", 16, "none", 0.4)] + [("RTN", b, "rtn", 0.4 - 0.1 * i) for i, b in enumerate([8, 4, 3])] \
        + [("GPTQ", b, "gptq", 0.3) for b in (4, 3)]
    iv = pd.DataFrame([{"label": l, "bits": b, "method": m, "column": "icl k=5", "estimate": e, "low": e - 0.05,
                        "high": e + 0.05, "majority": 0.13} for l, b, m, e in rows])
    fig = plots.abilities_vs_bits(iv, ["icl k=5"])
    rtn, gptq = fig.axes[0], fig.axes[1]
    for ax, measured in ((rtn, [3, 4, 8]), (gptq, [3, 4])):
        joined = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-" and len(ln.get_xdata()) > 1]
        assert len(joined) == 1
        assert sorted(round(x) for x in joined[0].get_xdata()) == measured          # 16 is never joined
        assert any(ln.get_marker() == "s" and list(ln.get_xdata()) == [16] for ln in ax.get_lines())
        assert [t.get_text() for t in ax.get_xticklabels()] == ["3", "4", "8", "16"]   # a gap stays visible
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["icl k=5", "unquantized (16)", "majority-class baseline"]
    plt.close(fig)


def test_component_bars_marks_uniform_guessing_on_perplexity_panels_only():
    iv = pd.DataFrame([{"label": l, "column": c, "estimate": e, "low": e * 0.9, "high": e * 1.1, "majority": m}
                       for l, e in (("base", 30.0), ("only ffn", 45.0)) for c, m in (("perplexity lee", None),)]
                      + [{"label": l, "column": "icl k=5", "estimate": e, "low": e - 0.05, "high": e + 0.05,
                          "majority": 0.13} for l, e in (("base", 0.43), ("only ffn", 0.2))])
    fig = plots.component_bars(iv, ["perplexity lee", "icl k=5"], uniform=49152)
    labels = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes]
    assert "uniform guessing (49,152)" in labels[0] and not any("uniform" in t for t in labels[1])
    assert "majority class" in labels[1]
    plt.close(fig)
