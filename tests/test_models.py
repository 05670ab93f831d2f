import pytest
import torch

from workbench.models import REGISTRY, load_model


def test_local_folder_loads_like_a_hub_model(tiny_lm_dir):
    from transformers import AutoModelForCausalLM

    model, tok, record = load_model(str(tiny_lm_dir))
    reference = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    ids = tok("w1 w2 w3 w4", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    assert record.source == "local" and record.task == "causal-lm"
    assert record.architecture == "LlamaForCausalLM" and record.dtype == "float32"
    assert record.n_params == sum(p.numel() for p in reference.parameters())
    assert record.caveat is None
    assert not model.training


def test_record_key_does_not_depend_on_where_the_folder_is(tiny_lm_dir, tmp_path):
    import shutil

    copy = tmp_path / "elsewhere"
    shutil.copytree(tiny_lm_dir, copy)
    k1, k2 = load_model(str(tiny_lm_dir)).record.key, load_model(str(copy)).record.key
    assert k1 == k2


def test_record_key_follows_the_weights_not_their_names_or_sizes(tiny_lm_dir, tmp_path, monkeypatch):
    import shutil

    from workbench import cache

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    folder = tmp_path / "mine"
    shutil.copytree(tiny_lm_dir, folder)
    model, _, record = load_model(str(folder))
    before = record.key
    with torch.no_grad():                      # new weights, same file names and sizes
        model.model.layers[0].mlp.up_proj.weight.mul_(1.5)
    model.save_pretrained(folder)
    after = load_model(str(folder)).record.key
    assert after["path"] != before["path"] and after["path"].startswith("sha256:")
    hashed = []                                # an unchanged folder is re-keyed by stat, not by re-reading it
    monkeypatch.setattr(cache, "_hash_file", lambda p: hashed.append(p) or "x")
    assert load_model(str(folder)).record.key == after and hashed == []
    (folder / "tokenizer_config.json").write_text((folder / "tokenizer_config.json").read_text() + " ")
    assert load_model(str(folder)).record.key != after and [p.name for p in hashed] == ["tokenizer_config.json"]


def test_task_override_loads_the_encoder_class(tiny_lm_dir):
    model, _, record = load_model(str(tiny_lm_dir), task="encoder")
    assert record.task == "encoder" and not hasattr(model, "lm_head")


def test_unknown_name_lists_the_registry():
    with pytest.raises(ValueError) as e:
        load_model("smollm-135")
    for name in REGISTRY:
        assert name in str(e.value)


def test_folder_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(str(tmp_path))


def test_unreachable_hub_id_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="hub") as e:
        load_model("no-such-owner/no-such-model-xyz")
    assert "save_pretrained" in str(e.value)


def test_bad_task_is_rejected():
    with pytest.raises(ValueError, match="task"):
        load_model("smollm2-135m", task="seq2seq")


@pytest.mark.integration
def test_default_model_carries_the_dequantized_caveat():
    model, tok, record = load_model("smollm2-135m")
    assert record.source == "registry" and record.task == "causal-lm"
    assert "4-bit" in record.caveat and "GGUF" in record.caveat and record.hub_id in record.caveat
    assert 134_000_000 < record.n_params < 135_000_000
    ids = tok("The quick brown fox", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.isfinite(logits).all() and logits.shape[-1] == 49152


@pytest.mark.integration
def test_encoder_is_real_fp32_without_caveat():
    model, tok, record = load_model("minilm-l6")
    assert record.task == "encoder" and record.caveat is None
    assert record.architecture == "BertModel" and 22_000_000 < record.n_params < 23_500_000
    with torch.no_grad():
        out = model(**tok("hello world", return_tensors="pt")).last_hidden_state
    assert out.shape[-1] == 384


def test_a_truncated_weight_file_is_named(tiny_lm_dir, tmp_path):
    import shutil

    folder = tmp_path / "cut"
    shutil.copytree(tiny_lm_dir, folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut \(model\.safetensors\) is damaged or truncated.*save_pretrained"):
        load_model(str(folder))


def test_a_gguf_file_is_parsed_once_during_a_conversion(tmp_path, monkeypatch):
    """transformers asks for a reader three times per conversion (tokenizer, config, weights):
    inside `_gguf_parsed_once` the file is parsed once, and gguf's class is restored afterwards."""
    import gguf
    import numpy as np

    from workbench.models import _gguf_parsed_once

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("w", np.arange(6, dtype=np.float32).reshape(2, 3))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    parses = []

    class Counting(gguf.GGUFReader):
        def __init__(self, *args, **kwargs):
            parses.append(args[0])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", Counting)
    with _gguf_parsed_once():
        first = gguf.GGUFReader(path)
        again = gguf.GGUFReader(str(tmp_path / "." / "tiny.gguf"))       # another spelling of the same file
        assert again is first and len(parses) == 1
        assert first.fields["general.architecture"].contents() == "llama"
        assert np.array_equal(np.asarray(first.tensors[0].data).reshape(2, 3), np.arange(6).reshape(2, 3))
    assert gguf.GGUFReader is Counting
    with pytest.raises(RuntimeError):
        with _gguf_parsed_once():
            raise RuntimeError("a failed conversion")
    assert gguf.GGUFReader is Counting                                       # restored after an error too
    gguf.GGUFReader(path)
    assert len(parses) == 2                                                  # outside the block: a fresh parse
