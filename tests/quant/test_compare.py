"""The workbench's RTN reproduces HQQ's, quanto's and torchao's plain RTN up to rounding ties."""

import math

import pandas as pd
import pytest
import torch

from workbench.quant.compare import agreement, library_dequantized_weight, library_quantize_model, matching_config
from workbench.evaluate import perplexity
from workbench.quant import QuantConfig

# (library, package to import) and the bits each test runs at: quanto offers 2 and 4 bits only.
CASES = [("hqq", "hqq", 4), ("hqq", "hqq", 3), ("hqq", "hqq", 2),
         ("quanto", "optimum.quanto", 4), ("quanto", "optimum.quanto", 2),
         ("torchao", "torchao", 4), ("torchao", "torchao", 3), ("torchao", "torchao", 2)]
PACKAGE = {"hqq": "hqq", "quanto": "optimum.quanto", "torchao": "torchao"}


def _weight(shift=0.0, seed=0):
    """64 x 256 weights (4 groups of 64 per row), a typical layer's spread, optionally all positive."""
    return torch.randn(64, 256, generator=torch.Generator().manual_seed(seed)) * 0.02 + shift


@pytest.mark.parametrize("library,package,bits", CASES)
def test_matching_config_agrees_with_library_up_to_ties(library, package, bits):
    pytest.importorskip(package)
    for shift in (0.0, 0.1):  # groups around 0, and groups far from 0 (where zero_in_range matters)
        w = _weight(shift, seed=bits)
        a = agreement(w, library_dequantized_weight(w, library, bits, 64), matching_config(library, bits, 64))
        assert a["share_differing"] < 1e-3, a
        assert a["n_not_one_step"] == 0, a  # where they differ, it is a tie broken the other way


@pytest.mark.parametrize("library", ["hqq", "quanto", "torchao"])
def test_mismatched_config_disagrees(library):
    """The test above can fail: the other range convention moves most codes of all-positive groups."""
    pytest.importorskip(PACKAGE[library])
    w = _weight(shift=0.1)
    good = matching_config(library, 4, 64)
    bad = QuantConfig(bits=4, group_size=64, zero_in_range=not good.zero_in_range, round_zero=good.round_zero,
                      scale_dtype="float32")
    lib = library_dequantized_weight(w, library, 4, 64)
    a = agreement(w, lib, bad)
    assert a["share_differing"] > 0.3 and a["n_not_one_step"] > 0, a
    # fp16 scales (the workbench default) are no tie-level difference either
    a16 = agreement(w, lib, QuantConfig(bits=4, group_size=64, zero_in_range=good.zero_in_range,
                                        round_zero=good.round_zero, scale_dtype="float16"))
    assert a16["share_differing"] > 1e-3, a16


@pytest.mark.parametrize("library,expected", [("quanto", "must be a divisor"), ("torchao", "to be divisible"), ("hqq", None)])
def test_group_128_on_576_wide_rows(library, expected):
    """quanto and torchao refuse; HQQ runs but its groups run across rows, unlike the workbench's."""
    pytest.importorskip(PACKAGE[library])
    w = torch.randn(4, 576, generator=torch.Generator().manual_seed(0))
    if expected:
        with pytest.raises(ValueError, match=expected):
            library_dequantized_weight(w, library, 4, 128)
        return
    lib = library_dequantized_weight(w, library, 4, 128)
    w_rows = w.clone()
    w_rows[1, :64] = 10.0  # shared with row 0's last 64 inputs in HQQ's flat grouping
    lib_rows = library_dequantized_weight(w_rows, library, 4, 128)
    assert not torch.allclose(lib[0, 512:], lib_rows[0, 512:])  # row 0's tail felt row 1's head
    assert torch.allclose(lib[0, :512], lib_rows[0, :512])


@pytest.mark.parametrize("library", ["hqq", "quanto", "torchao"])
def test_library_model_runs_on_cpu(tiny_lm, tiny_text, library):
    pytest.importorskip(PACKAGE[library])
    model, tokenizer, _ = tiny_lm
    qmodel, seconds = library_quantize_model(model, library, bits=4, group_size=16)
    assert seconds >= 0
    x = torch.randint(0, 64, (1, 12))
    with torch.no_grad():
        ref, out = model(input_ids=x).logits, qmodel(input_ids=x).logits
    assert torch.isfinite(out).all() and not torch.equal(ref, out)
    assert type(qmodel.model.layers[0].mlp.down_proj) is not torch.nn.Linear or library == "torchao"
    assert torch.equal(model.lm_head.weight, qmodel.lm_head.weight)
    # perplexity runs the model under torch.inference_mode, which quanto's weights must survive
    assert math.isfinite(perplexity(qmodel, tokenizer, tiny_text, seqlen=32, max_windows=2, progress=False))


def test_unsupported_bits_are_refused():
    with pytest.raises(ValueError, match="quanto does not quantize to 3 bits"):
        matching_config("quanto", 3, 64)
    with pytest.raises(ValueError, match="unknown library"):
        matching_config("gptq", 4, 64)


def test_compare_libraries_is_a_stored_sweep_whose_windows_rerun(tiny_lm_dir, tmp_path, monkeypatch):
    """Every row a point of the sweep engine (read back, not recomputed), a library that refuses
    the bits a row with its note and no perplexity, and any window of a library's row re-scored
    from scratch equal to the stored one (what make test samples from the committed snapshot)."""
    from workbench.experiments import read_sweep
    from workbench.quant import compare

    for library in ("hqq", "quanto", "torchao"):
        pytest.importorskip(PACKAGE[library])
    from workbench.models import load_model

    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path))
    model, tokenizer, record = load_model(str(tiny_lm_dir))    # as saved: the windows are re-run from the saved weights
    calls = []
    real = compare._build
    monkeypatch.setattr(compare, "_build", lambda p, m: calls.append(p["method"]) or real(p, m))
    kw = dict(corpus="lee", bits=4, group_size=16, seqlen=32, max_windows=2, progress=False)
    table = compare.compare_libraries(model, tokenizer, record, **kw)
    assert table.method.tolist() == ["unquantized", "workbench RTN (default config)", "workbench RTN matching hqq",
                                     "hqq RTN", "workbench RTN matching quanto", "quanto RTN",
                                     "workbench RTN matching torchao", "torchao RTN"]
    assert len(calls) == 8 and table.perplexity.notna().all() and (table.n_differing_not_one_step.dropna() == 0).all()
    again, windows = compare.compare_libraries(model, tokenizer, record, return_windows=True, **kw)
    assert len(calls) == 8
    pd.testing.assert_frame_equal(again, table)
    assert (table.windows == 2).all() and ((table.low <= table.perplexity) & (table.perplexity <= table.high)).all()
    hqq = windows[windows.label == "hqq RTN"]
    assert hqq.window.tolist() == [0, 1] and table.perplexity[3] == pytest.approx(math.exp(hqq.nll.sum() / hqq.tokens.sum()))
    three = compare.compare_libraries(model, tokenizer, record, **{**kw, "bits": 3}, libraries=("quanto",))
    refused = three.set_index("method").loc["quanto RTN"]
    assert "workbench RTN matching quanto" not in three.method.tolist()
    assert refused.note.startswith("refused: quanto does not quantize to 3 bits") and math.isnan(refused.perplexity)
    assert refused.windows == 0 and math.isnan(refused.low)
    record_ = next(r for r in read_sweep("libraries") if r["point"]["method"] == "quanto" and r["items"])
    fresh = compare.rerun_library_windows(record_["point"], [1])
    assert fresh[0]["window"] == 1 and fresh[0]["nll"] == pytest.approx(record_["items"][1]["nll"], rel=1e-6)


def test_compare_libraries_refuses_a_mistyped_library_before_running_anything(tiny_lm):
    from workbench.quant.compare import compare_libraries

    model, tokenizer, _ = tiny_lm
    with pytest.raises(TypeError, match="got the string 'hqq'"):
        compare_libraries(model, tokenizer, None, libraries="hqq")
    with pytest.raises(ValueError, match="unknown libraries \\['torchAO'\\]"):
        compare_libraries(model, tokenizer, None, libraries=("torchAO",))
