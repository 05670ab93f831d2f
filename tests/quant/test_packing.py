import functools
import json
import math
import os
import re
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from workbench.quant import packing
from workbench.quant.packing import load_quantized, pack_bits, packed_size, save_quantized, unpack_bits
from workbench.quant import QuantConfig, quantize_model


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_unpack_round_trip(bits):
    g = torch.Generator().manual_seed(bits)
    for n in (0, 1, 7, 13, 1000003):
        codes = torch.randint(0, 2 ** bits, (n,), generator=g, dtype=torch.uint8)
        packed = pack_bits(codes, bits)
        assert packed.dtype == torch.uint8 and packed.shape == (math.ceil(n * bits / 8),)
        assert torch.equal(unpack_bits(packed, bits, n), codes)
    top = torch.full((5,), 2 ** bits - 1, dtype=torch.uint8)           # all ones: no bit is lost
    assert torch.equal(unpack_bits(pack_bits(top, bits), bits, 5), top)
    grid = torch.randint(0, 2 ** bits, (3, 5), generator=g, dtype=torch.uint8)   # any shape, flattened
    assert torch.equal(unpack_bits(pack_bits(grid, bits), bits, 15).view(3, 5), grid)


def test_bit_order_and_errors():
    # 3-bit codes 1, 2, 3, least significant bit first: 001 | 010 << 3 | 011 << 6 = 0b11010001, then 0b0
    assert pack_bits(torch.tensor([1, 2, 3], dtype=torch.uint8), 3).tolist() == [0b11010001, 0]
    with pytest.raises(ValueError, match=r"\[0, 7\]"):
        pack_bits(torch.tensor([8], dtype=torch.uint8), 3)
    with pytest.raises(ValueError, match="bits"):
        pack_bits(torch.tensor([1], dtype=torch.uint8), 9)
    with pytest.raises(ValueError, match="bytes"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), 3, 13)


def _assert_exact(a: nn.Module, b: nn.Module, ids=None):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    if ids is not None:
        with torch.no_grad():
            assert torch.equal(a(ids).logits, b(ids).logits)


def _ids():
    return torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))


def _round_trip(model, spec, tmp_path, tokenizer=None):
    qmodel, _ = quantize_model(model, spec, progress=False)
    folder = save_quantized(qmodel, tmp_path / "ckpt", tokenizer)
    loaded = load_quantized(folder)
    _assert_exact(qmodel, loaded, _ids())
    assert loaded.quant_state.keys() == qmodel.quant_state.keys()
    assert not loaded.training
    return qmodel, loaded, folder


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("symmetric", [False, True])
def test_save_load_exact_every_width(tiny_lm, tmp_path, bits, symmetric):
    model, tokenizer, _ = tiny_lm
    # group 32: the 48-wide rows are 1 x 32 + 16, a shorter last group
    tok = tokenizer if bits == 2 else None
    qmodel, loaded, folder = _round_trip(model, QuantConfig(bits=bits, group_size=32, symmetric=symmetric),
                                         tmp_path, tok)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight       # re-tied
    for name, qw in qmodel.quant_state.items():
        lw = loaded.quant_state[name]
        assert lw.config == qw.config and torch.equal(lw.scale, qw.scale) and torch.equal(lw.zero, qw.zero)
    assert (folder / "config.json").exists() and (folder / "tokenizer.json").exists() == (bits == 2)
    meta = json.loads((folder / packing.META_FILE).read_text())
    assert {m["zero"] for m in meta["modules"].values()} == {"implied" if symmetric else "packed"}
    sizes = packed_size(folder)
    assert len(sizes) == 14 and set(sizes.groups) == {"1x32+16", "3x32"}
    assert (sizes.stored_bytes == sizes.ideal_bytes).all()                # exact packing, no slack


@pytest.mark.parametrize("cfg", [
    {r"q_proj": QuantConfig(bits=3, group_size=32, mse_clip=True)},         # slow: two modules only
    QuantConfig(bits=4, group_size=32, round_zero=False),                   # real-valued zeros
    QuantConfig(bits=3, group_size=32, outlier_fraction=0.01),
    QuantConfig(bits=4, granularity="channel"),
    QuantConfig(bits=5, granularity="tensor", scale_dtype="bfloat16"),
], ids=["mse_clip", "real_zero", "outliers", "channel", "tensor_bf16"])
def test_save_load_exact_variants(tiny_lm, tmp_path, cfg):
    model, _, _ = tiny_lm
    qmodel, loaded, folder = _round_trip(model, cfg, tmp_path)
    meta = json.loads((folder / packing.META_FILE).read_text())
    if isinstance(cfg, QuantConfig) and cfg.outlier_fraction:
        name = next(iter(qmodel.quant_state))
        qw, lw = qmodel.quant_state[name], loaded.quant_state[name]
        assert meta["modules"][name]["n_outliers"] == qw.outlier_index.numel() > 0
        assert torch.equal(lw.outlier_index, qw.outlier_index) and torch.equal(lw.outlier_value, qw.outlier_value)
    if isinstance(cfg, QuantConfig) and not cfg.round_zero:
        assert {m["zero"] for m in meta["modules"].values()} == {"real"}
    assert (packed_size(folder).overhead == 0).all()


def test_save_load_mixed_spec(tiny_lm, tmp_path):
    model, _, _ = tiny_lm
    spec = {r"self_attn\.(q|k)_proj": QuantConfig(bits=2, group_size=16),
            r"mlp\.down_proj": QuantConfig(bits=6, group_size=32, symmetric=True),
            r"layers\.0\.mlp": None,                                        # left in full precision
            r"mlp": QuantConfig(bits=3, group_size=48)}
    qmodel, loaded, folder = _round_trip(model, spec, tmp_path)
    assert "model.layers.0.mlp.up_proj" not in loaded.quant_state
    assert "model.layers.1.mlp.up_proj" in loaded.quant_state
    meta = json.loads((folder / packing.META_FILE).read_text())
    assert meta["aliases"] == {"lm_head.weight": "model.embed_tokens.weight"}


@pytest.mark.parametrize("offset", [False, True])
def test_save_load_bcq(tiny_lm, tmp_path, offset):
    bcq = pytest.importorskip("workbench.quant.bcq")
    model, _, _ = tiny_lm
    spec = {r"self_attn": QuantConfig(method="bcq", bits=2, group_size=16, bcq_offset=offset),
            r"mlp": QuantConfig(bits=4, group_size=32)}
    qmodel, loaded, folder = _round_trip(model, spec, tmp_path)
    layer = loaded.get_submodule("model.layers.1.self_attn.o_proj")
    assert isinstance(layer, bcq.BCQLinear) and layer.alpha.requires_grad
    assert (layer.offset is not None) == offset
    from safetensors import safe_open
    with safe_open(folder / packing.PLAIN_FILE, "pt") as f:                 # every tensor stored once
        assert not [k for k in f.keys() if k.endswith((".offset", ".alpha", ".binary"))]
    assert loaded.quant_state["model.layers.1.self_attn.o_proj"] == spec[r"self_attn"]
    sizes = packed_size(folder).set_index("module")
    assert sizes.loc["model.layers.1.self_attn.o_proj", "format"] == "bcq"
    assert (sizes.overhead == 0).all()


class _Wrapper(nn.Module):
    """A bare module (no Hugging Face config) with SmolLM2-sized FFN matrices."""

    def __init__(self):
        super().__init__()
        self.up = nn.Linear(576, 1536, bias=False)
        self.down = nn.Linear(1536, 576, bias=True)
        self.norm = nn.LayerNorm(576)

    def forward(self, x):
        return self.down(torch.relu(self.up(self.norm(x))))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_file_size_close_to_ideal(tmp_path, bits):
    torch.manual_seed(0)
    qmodel, _ = quantize_model(_Wrapper(), QuantConfig(bits=bits, group_size=128), progress=False)
    folder = save_quantized(qmodel, tmp_path / "w")
    assert not (folder / "config.json").exists()
    sizes = packed_size(folder)
    assert list(sizes.groups) == ["4x128+64", "12x128"]
    assert sizes.ideal_bytes[0] == math.ceil(1536 * 576 * bits / 8) + 1536 * 5 * 2 + math.ceil(1536 * 5 * bits / 8)
    assert (sizes.stored_bytes == sizes.ideal_bytes).all()
    assert 0 < sizes.attrs["file_overhead"] < 0.05
    assert sizes.attrs["file_bytes"] == (folder / packing.QUANT_FILE).stat().st_size
    if bits != 3:
        return
    # no config.json: the caller supplies the architecture
    with pytest.raises(ValueError, match="model="):
        load_quantized(folder)
    loaded = load_quantized(folder, model=_Wrapper())
    _assert_exact(qmodel, loaded)
    x = torch.randn(3, 576)
    assert torch.equal(qmodel(x), loaded(x))


def test_interrupted_save_leaves_nothing(tiny_lm, tmp_path, monkeypatch):
    model, _, _ = tiny_lm
    q2, _ = quantize_model(model, QuantConfig(bits=2, group_size=32), progress=False)
    q4, _ = quantize_model(model, QuantConfig(bits=4, group_size=32), progress=False)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(packing, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        save_quantized(q4, tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []                                   # no folder, no temp left
    monkeypatch.undo()

    folder = save_quantized(q2, tmp_path / "ckpt")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real_save_file = packing.save_file
    calls = []

    def second_call_fails(*args, **kwargs):                                 # the first file is written
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_save_file(*args, **kwargs)

    monkeypatch.setattr(packing, "save_file", second_call_fails)
    with pytest.raises(OSError, match="disk full"):
        save_quantized(q4, folder)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before     # the old checkpoint, untouched
    monkeypatch.undo()

    save_quantized(q4, folder)                                              # replacing works
    assert load_quantized(folder).quant_state["model.layers.0.mlp.up_proj"].config.bits == 4
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_clear_errors(tiny_lm, tmp_path, tiny_lm_dir):
    model, _, _ = tiny_lm
    with pytest.raises(ValueError, match="quantize it with quantize_model first"):
        save_quantized(model, tmp_path / "x")
    with pytest.raises(ValueError, match="not a workbench quantized checkpoint"):
        load_quantized(tiny_lm_dir)                                         # a plain save_pretrained folder
    with pytest.raises(ValueError, match="not a workbench quantized checkpoint"):
        packed_size(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_quantized(tmp_path / "missing")
    qmodel, _ = quantize_model(model, QuantConfig(bits=4, group_size=32), progress=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a workbench checkpoint"):
        save_quantized(qmodel, tmp_path / "mine")                          # never deletes a foreign folder
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    folder = save_quantized(qmodel, tmp_path / "ok")
    with pytest.raises(OSError, match="model.safetensors"):                # never silently random layers
        AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        qmodel.model.layers[0].mlp.up_proj.weight.add_(1e-3)                # moved off its grid
    with pytest.raises(ValueError, match="not on the grid"):
        save_quantized(qmodel, tmp_path / "y")
    assert not (tmp_path / "y").exists()


def _q(model, bits):
    return quantize_model(model, QuantConfig(bits=bits, group_size=32), progress=False)[0]


def _flip_bit(path: Path, tensor: str) -> None:
    """Flip the lowest bit of `tensor`'s first data byte in a safetensors file (the first 8 bytes:
    the JSON header's length n, little-endian u64; then the header; the data starts at 8 + n)."""
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    start, _ = json.loads(data[8:8 + n])[tensor]["data_offsets"]
    data[8 + n + start] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("file, tensor", [(packing.QUANT_FILE, "model.layers.1.mlp.down_proj.codes"),
                                          (packing.PLAIN_FILE, "model.norm.weight")], ids=["quantized", "plain"])
def test_a_flipped_bit_is_refused_naming_the_file_and_tensor(tiny_lm, tmp_path, file, tensor):
    folder = save_quantized(_q(tiny_lm[0], 4), tmp_path / "ckpt")
    load_quantized(folder)                                                  # intact: loads
    _flip_bit(folder / file, tensor)
    with pytest.raises(ValueError, match=rf"{re.escape(str(folder / file))}: tensor '{re.escape(tensor)}' "
                                         r"does not match the sha256.*re-save the checkpoint"):
        load_quantized(folder)


def test_checkpoints_without_checksums(tiny_lm, tmp_path):
    qmodel = _q(tiny_lm[0], 3)
    folder = save_quantized(qmodel, tmp_path / "ckpt")
    meta_path = folder / packing.META_FILE
    meta = json.loads(meta_path.read_text())
    assert meta["version"] == 2 and set(meta["checksums"]) == {packing.QUANT_FILE, packing.PLAIN_FILE}
    del meta["checksums"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format version 2 but records no checksums"):
        load_quantized(folder)                                              # a v2 file must have them
    meta_path.write_text(json.dumps({**meta, "version": 1}))                # as format 1 wrote it
    _assert_exact(qmodel, load_quantized(folder), _ids())                   # still loads (unverified)


def test_a_truncated_file_is_refused_naming_it(tiny_lm, tmp_path):
    folder = save_quantized(_q(tiny_lm[0], 4), tmp_path / "ckpt")
    for file in (packing.QUANT_FILE, packing.PLAIN_FILE):
        path = folder / file
        data = path.read_bytes()
        for cut in (len(data) - 100, 5):                                    # in the data; in the header length
            path.write_bytes(data[:cut])
            with pytest.raises(ValueError, match=rf"{re.escape(str(path))} is truncated.*re-save the checkpoint"):
                load_quantized(folder)
        path.write_bytes(data)
    (folder / packing.QUANT_FILE).write_bytes(data[:5])
    with pytest.raises(ValueError, match="is truncated"):
        packed_size(folder)


def _replace_then(action, when_src: Path):
    """os.replace that, right after renaming `when_src` (the old checkpoint, set aside), runs `action`."""
    real = os.replace

    def replace(src, dst, **kw):
        real(src, dst, **kw)
        if Path(src) == when_src:
            action()
    return replace


def test_ctrl_c_between_the_renames_keeps_the_old_checkpoint(tiny_lm, tmp_path, monkeypatch):
    folder = save_quantized(_q(tiny_lm[0], 2), tmp_path / "ckpt")
    q4 = _q(tiny_lm[0], 4)

    def interrupt():
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "replace", _replace_then(interrupt, folder))
    with pytest.raises(KeyboardInterrupt):
        save_quantized(q4, folder)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]                 # the old one back, no temp left
    assert load_quantized(folder).quant_state["model.layers.0.mlp.up_proj"].config.bits == 2


KILLED_SAVE = """
import os, signal, sys
from pathlib import Path
from workbench.quant import packing
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
model = packing.load_quantized(src)
real = os.replace
def replace(a, b, **kw):
    real(a, b, **kw)
    if Path(a) == dst:                          # the old checkpoint is aside, the new one not yet in place
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
packing.save_quantized(model, dst)
"""


def test_a_save_killed_between_the_renames_is_recovered_by_the_next_load_or_save(tiny_lm, tmp_path):
    import shutil

    folder = save_quantized(_q(tiny_lm[0], 2), tmp_path / "a" / "ckpt")
    q4 = _q(tiny_lm[0], 4)
    save_quantized(q4, tmp_path / "src")
    proc = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(tmp_path / "src"), str(folder)],
                          cwd=Path(packing.__file__).parents[2], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not folder.exists()                                              # killed in the window
    assert any(p.name.startswith(".ckpt.old-") for p in folder.parent.iterdir())   # the old one, set aside
    shutil.copytree(tmp_path / "a", tmp_path / "b", symlinks=True)          # the same wreck, twice
    assert load_quantized(folder).quant_state["model.layers.0.mlp.up_proj"].config.bits == 2   # the old one
    save_quantized(q4, tmp_path / "b" / "ckpt")                             # a save over the wreck works too
    assert load_quantized(tmp_path / "b" / "ckpt").quant_state["model.layers.0.mlp.up_proj"].config.bits == 4
    for d in ("a", "b"):                                                    # the dead save's leftovers are gone
        assert [p.name for p in (tmp_path / d).iterdir()] == ["ckpt"]


def test_the_old_checkpoint_of_a_live_save_is_not_taken(tiny_lm, tmp_path, monkeypatch):
    folder = save_quantized(_q(tiny_lm[0], 2), tmp_path / "ckpt")
    aside = tmp_path / f".ckpt.old-{os.getpid()}-0a1b"                       # this process: alive, mid-save
    os.replace(folder, aside)
    monkeypatch.setattr(packing, "_recover", functools.partial(packing._recover, wait_s=0.05))
    with pytest.raises(FileNotFoundError, match=rf"set the old checkpoint aside as .*{aside.name}.*rename"):
        load_quantized(folder)
    assert aside.exists() and not folder.exists()


def test_a_quantized_gpt2_saves_and_loads(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2)).eval()
    qmodel, report = quantize_model(model, QuantConfig(bits=3, group_size=16))
    assert len(report) == 8                    # the Conv1D layers, as nn.Linear
    save_quantized(qmodel, tmp_path / "gpt2-w3")
    loaded = load_quantized(tmp_path / "gpt2-w3")
    ids = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, qmodel(ids).logits)
    assert set(loaded.quant_state) == set(report.module)
