"""Bit-packed checkpoints of quantized models: real files at the real bit width (HQQ bitpack style).

    from workbench.quant.packing import pack_bits, unpack_bits, save_quantized, load_quantized, packed_size
    packed = pack_bits(codes, 3)                        # uint8 [ceil(numel * 3 / 8)], a dense bitstream
    codes = unpack_bits(packed, 3, numel)               # uint8 [numel]
    qmodel, report = quantize_model(model, QuantConfig(bits=3, group_size=128))
    save_quantized(qmodel, "smollm2-w3g128", tokenizer)
    qmodel = load_quantized("smollm2-w3g128")           # state_dict bit-identical to the saved one
    sizes = packed_size("smollm2-w3g128")               # per module; sizes.attrs: the whole file

Bitstream: code i of a `bits`-wide stream occupies bits [i*bits, (i+1)*bits) of the stream,
least significant bit first, and byte j holds stream bits [8j, 8j+8); so 3-, 5-, 6- and 7-bit
codes straddle byte boundaries, and the last byte is zero-padded.

A checkpoint folder holds:
    quantized.safetensors    per quantized module M (uniform: RTN/GPTQ):
                               M.codes  uint8, the [out, in] codes packed at `bits` bits
                               M.scale  [out, n_groups] at config.scale_dtype
                               M.zero   integer zeros packed at `bits` bits; real zeros at
                                        scale_dtype; absent when symmetric (zero = 2^(bits-1))
                               M.outlier_index int32 flat indices, M.outlier_value in the
                                        weight's dtype (only with outliers)
                             per BCQ module: M.binary (the q planes ±1 packed at 1 bit each,
                             +1 -> 1), M.alpha [q, out, n_groups] at scale_dtype and, with
                             bcq_offset, M.offset [out, n_groups] at scale_dtype
    unquantized.safetensors  every other tensor of the state dict (embeddings, norms, biases),
                             unchanged, each stored once (tied weights are recorded as aliases);
                             not named model.safetensors, so that from_pretrained refuses the
                             folder instead of silently initialising the quantized layers
    workbench_quant.json     format version, per-module format, config, shape, dtypes, aliases,
                             and `checksums`: {file: {tensor: sha256 of its dtype, shape and
                             bytes}} for both safetensors files
    config.json (+ tokenizer files)   model.config.save_pretrained (tokenizer.save_pretrained)

Nothing is ever rounded on the way: a scale, alpha or real zero that is not exactly
representable at scale_dtype is stored at float32, and an integer zero outside [0, 2^bits - 1]
is stored as a real zero; `packed_size` then shows the overhead. save_quantized also checks
that the codes, scales and outliers reproduce each weight bit for bit before writing.

Format versions: 1 had no checksums (still loaded, unverified); 2 records them, and
load_quantized refuses a tensor whose bytes differ (a flipped bit, a bad copy) or a file that is
truncated, naming the file and the tensor.

A model without a Hugging Face `config` (a bare nn.Module) is saved without config.json; load
it with `load_quantized(folder, model=a_fresh_instance)`.

Replacing a checkpoint: the new one is written to `.NAME.tmp-PID-XXXX` beside the target; then
the old folder is renamed aside to `.NAME.old-PID-XXXX`, the new one renamed into place, and
the old one deleted. An exception anywhere (Ctrl-C included) puts the old folder back if the new
one is not in place. A process killed between the two renames (SIGKILL, the OOM killer) leaves
no folder at the path but the old checkpoint aside: the next load_quantized or save_quantized of
that path sees that the process PID is gone and renames the old checkpoint back (and deletes
that process's temporary folder). So a save that did not return leaves the old checkpoint (or,
when there was none, nothing); one that returned leaves the new one; never a mix. Loading in the
instant between the renames of a live save waits (up to 2 s) for the new folder. PIDs are those
of this machine: do not save one path from two machines that share the disk. Nothing is
fsynced, so after a power cut the files themselves may be damaged; the checksums then say so.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import struct
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from workbench.modules import to_linear
from workbench.quant.bcq import BCQLinear
from workbench.quant.grid import QuantConfig, QuantizedWeight, dequantize, quantize

FORMAT, VERSION = "workbench-packed", 2         # 2: per-tensor checksums (1 still loads, unverified)
CHECKSUM_VERSION = 2                             # the first format version that records checksums
META_FILE = "workbench_quant.json"
QUANT_FILE, PLAIN_FILE = "quantized.safetensors", "unquantized.safetensors"
INDEX_DTYPE = torch.int32                    # outlier indices; counted at 4 bytes in the ideal
RESAVE = "re-save the checkpoint with workbench.packing.save_quantized (or restore the folder from a good copy)"


# ----------------------------------------------------------------------------- bit packing

def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an integer from 1 to 8, got {bits!r}")


def _overlaps(bits: int):
    """(code slot i, byte j, shift) for every code slot of an 8-code block that touches byte j:
    the code's bits [i*bits, (i+1)*bits) of the block meet byte j's bits [8j, 8j+8)."""
    for i in range(8):
        for j in range(i * bits // 8, ((i + 1) * bits - 1) // 8 + 1):
            yield i, j, i * bits - 8 * j


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes (any shape, values in [0, 2^bits - 1]) into a dense little-endian
    bitstream: a uint8 1-D tensor of ceil(numel * bits / 8) bytes. Eight codes fill exactly
    `bits` bytes, so each byte column of the [n/8, bits] result is the OR of the (at most four)
    shifted code columns that touch it: a fixed number of whole-tensor uint8 operations, no
    loop over elements. ValueError for codes outside the range."""
    _check_bits(bits)
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(f"codes must be an integer tensor (uint8), got {codes.dtype}")
    flat = codes.detach().reshape(-1)
    n = flat.numel()
    if n and (int(flat.min()) < 0 or int(flat.max()) >= 2 ** bits):
        raise ValueError(f"codes must lie in [0, {2 ** bits - 1}] to pack at {bits} bits, "
                         f"got values in [{int(flat.min())}, {int(flat.max())}]")
    if bits == 8:
        return flat.to(torch.uint8).clone()
    x = F.pad(flat.to(torch.uint8), (0, (-n) % 8)).view(-1, 8).T.contiguous()   # [8, n/8] code slots
    out = torch.zeros(bits, x.shape[1], dtype=torch.uint8, device=x.device)      # [bits, n/8] bytes
    for i, j, shift in _overlaps(bits):
        out[j] |= x[i] << shift if shift >= 0 else x[i] >> -shift                 # uint8: high bits drop off
    return out.T.reshape(-1)[: (n * bits + 7) // 8].clone()


def unpack_bits(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of `pack_bits`: the first `numel` codes of a `bits`-wide bitstream, as a uint8
    1-D tensor. `packed` must be uint8 of exactly ceil(numel * bits / 8) bytes."""
    _check_bits(bits)
    need = (numel * bits + 7) // 8
    if packed.dtype != torch.uint8 or packed.numel() != need:
        raise ValueError(f"{numel} codes at {bits} bits need a uint8 stream of {need} bytes, got "
                         f"{packed.numel()} bytes of {packed.dtype}")
    flat = packed.detach().reshape(-1)
    if bits == 8:
        return flat.clone()
    b = F.pad(flat, (0, (-need) % bits)).view(-1, bits).T.contiguous()          # [bits, n/8] bytes
    out = torch.zeros(8, b.shape[1], dtype=torch.uint8, device=b.device)         # [8, n/8] code slots
    for i, j, shift in _overlaps(bits):
        out[i] |= b[j] >> shift if shift >= 0 else b[j] << -shift
    out &= 2 ** bits - 1
    return out.T.reshape(-1)[:numel].clone()


# ----------------------------------------------------------------------------- helpers

def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _compact(t: torch.Tensor, dtype_name: str) -> torch.Tensor:
    """`t` cast to `dtype_name` when that is exact, else kept at float32 (never lossy)."""
    low = t.to(getattr(torch, dtype_name)).contiguous()
    return low if torch.equal(low.float(), t.float()) else t.float().contiguous()


def _nbytes(dtype_name: str) -> int:
    return torch.empty((), dtype=getattr(torch, dtype_name)).element_size()


def _checkpoint_json(folder: Path) -> dict:
    """The folder's metadata, or a clear error when it is not a workbench packed checkpoint.

    A missing folder is first recovered from what a killed save left beside it (`_recover`)."""
    if not folder.exists():
        _recover(folder)
    if not folder.is_dir():
        for aside, pid in _leftovers(folder, "old")[:1]:           # a live (or PID-reused) save's
            raise FileNotFoundError(f"{folder} does not exist: a save_quantized of it by process {pid} set the "
                                    f"old checkpoint aside as {aside} and has not finished. If that process is "
                                    f"no longer saving, rename {aside} to {folder}")
        raise FileNotFoundError(f"{folder} does not exist or is not a folder; pass a folder written by "
                                "workbench.packing.save_quantized")
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not (folder / QUANT_FILE).exists():
        raise ValueError(f"{folder} is not a workbench quantized checkpoint (no valid {META_FILE} and "
                         f"{QUANT_FILE}); write one with workbench.packing.save_quantized. For a plain "
                         "Hugging Face folder use workbench.models.load_model")
    if meta.get("version", 0) > VERSION:
        raise ValueError(f"{folder} was written by a newer workbench (format version {meta['version']}, "
                         f"this one reads up to {VERSION}); upgrade the workbench")
    return meta


def _tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (C order, as safetensors stores them on this
    little-endian machine): a changed byte, dtype or shape changes it."""
    h = hashlib.sha256(f"{_dtype_name(t.dtype)} {list(t.shape)}\n".encode())
    h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _read_tensors(folder: Path, file: str, meta: dict) -> dict[str, torch.Tensor]:
    """The tensors of one safetensors file of a checkpoint, checked against the sha256s recorded at
    save time (format version 2 on). A truncated or corrupted file is a ValueError naming the file,
    the tensor and the fix."""
    path = folder / file
    try:
        tensors = load_file(path)
    except SafetensorError as e:
        raise ValueError(f"{path} is truncated or not a valid safetensors file ({e}); {RESAVE}") from None
    if meta.get("version", 0) < CHECKSUM_VERSION:
        return tensors                                         # written before checksums: nothing to check
    want = (meta.get("checksums") or {}).get(file)
    if not isinstance(want, dict):
        raise ValueError(f"{folder / META_FILE} has format version {meta['version']} but records no checksums "
                         f"for {file}; {RESAVE}")
    if want.keys() != tensors.keys():
        raise ValueError(f"{path} does not hold the tensors recorded in {META_FILE} (missing "
                         f"{sorted(want.keys() - tensors.keys())[:5]}, unexpected "
                         f"{sorted(tensors.keys() - want.keys())[:5]}); {RESAVE}")
    for name, t in tensors.items():
        if _tensor_sha256(t) != want[name]:
            raise ValueError(f"{path}: tensor {name!r} does not match the sha256 recorded when the checkpoint "
                             f"was saved (the file was corrupted or changed since); {RESAVE}")
    return tensors


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (then a folder named after it may be in use)."""
    if os.name != "posix":
        return True                                            # no harmless probe: assume in use
    try:
        os.kill(pid, 0)                                        # signal 0: an existence check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True                                            # another user's process
    return True


def _leftovers(folder: Path, kind: str) -> list[tuple[Path, int]]:
    """(path, pid) of each `.NAME.{kind}-PID-XXXX` folder that save_quantized made beside `folder`
    (kind "tmp": a new checkpoint being written; "old": the previous one, set aside)."""
    pattern = re.compile(rf"\.{re.escape(folder.name)}\.{kind}-(\d+)-[a-z0-9_]+")
    try:
        entries = list(folder.parent.iterdir())
    except OSError:
        return []
    return [(p, int(m.group(1))) for p in entries if (m := pattern.fullmatch(p.name))]


def _recover(folder: Path, wait_s: float = 2.0) -> None:
    """Repair what a save_quantized killed between its renames left (see the module docstring).

    With no folder at the path, an old checkpoint set aside by a dead process is renamed back;
    one set aside by a live process (a save between its two renames) is waited for, up to
    `wait_s`. Then the temporary folders of dead processes are deleted, and their set-aside old
    checkpoints too once a folder is in place."""
    deadline = time.monotonic() + wait_s
    while not folder.exists() and time.monotonic() < deadline:
        asides = _leftovers(folder, "old")
        dead = [p for p, pid in asides if not _pid_alive(pid)]
        if not asides:
            break
        try:
            if dead:
                os.replace(max(dead, key=lambda p: p.stat().st_mtime_ns), folder)   # the newest, if several
                continue
        except OSError:
            pass                                               # another process recovered it first
        time.sleep(0.01)                                       # a live save: its new folder comes next
    if folder.exists():
        garbage = _leftovers(folder, "tmp") + _leftovers(folder, "old")
    else:
        garbage = _leftovers(folder, "tmp")
    for path, pid in garbage:
        if not _pid_alive(pid):
            shutil.rmtree(path, ignore_errors=True)


def _finish_swap(folder: Path, tmp: Path, aside: Path) -> None:
    """Tidy up after save_quantized's renames, whatever point it reached (an exception may strike
    between any two statements): the old checkpoint goes back if no new one is in place, else it
    is deleted; the temporary folder is deleted."""
    if aside.exists():
        if folder.exists():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(aside, folder)
    if tmp.exists():
        shutil.rmtree(tmp, ignore_errors=True)


def _pack_uniform(name: str, module: nn.Module, qw: QuantizedWeight) -> tuple[dict, dict]:
    """Tensors and metadata of one RTN/GPTQ module; checks that they reproduce its weight exactly."""
    cfg = qw.config
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"{name}: quant_state has a QuantizedWeight but the module has no 2-D weight")
    w = weight.detach().cpu()
    scale, zero = qw.scale.detach().cpu().float(), qw.zero.detach().cpu().float()
    s = None if qw.column_scale is None else qw.column_scale.detach().cpu().float()   # AWQ: codes of W diag(s)
    codes = quantize(w.float() if s is None else w.float() * s, scale, zero, cfg)
    w_rec = dequantize(codes, scale, zero, cfg) if s is None else dequantize(codes, scale, zero, cfg) / s
    idx = None
    if qw.outlier_index is not None and qw.outlier_index.numel():
        idx = qw.outlier_index.detach().cpu().long().reshape(-1)
        w_rec.view(-1)[idx] = w.reshape(-1)[idx].float()
    if not torch.equal(w_rec.to(w.dtype), w):
        raise ValueError(f"{name}: the weight is not on the grid of its quant_state (it was changed after "
                         "quantize_model, or its groups are not contiguous); re-quantize before saving")
    t = {f"{name}.codes": pack_bits(codes, cfg.bits), f"{name}.scale": _compact(scale, cfg.scale_dtype)}
    implied = torch.full_like(zero, (cfg.maxq + 1) / 2)
    integer = bool(torch.equal(zero, zero.round()) and zero.min() >= 0 and zero.max() <= cfg.maxq)
    if cfg.symmetric and torch.equal(zero, implied):
        zero_format = "implied"
    elif integer:
        zero_format = "packed"
        t[f"{name}.zero"] = pack_bits(zero.to(torch.uint8), cfg.bits)
    else:
        zero_format = "real"
        t[f"{name}.zero"] = _compact(zero, cfg.scale_dtype)
    if idx is not None:
        if w.numel() > torch.iinfo(INDEX_DTYPE).max:
            raise ValueError(f"{name}: too many weights for int32 outlier indices")
        t[f"{name}.outlier_index"] = idx.to(INDEX_DTYPE)
        t[f"{name}.outlier_value"] = w.reshape(-1)[idx].clone()
    if s is not None:
        t[f"{name}.column_scale"] = _compact(s, cfg.scale_dtype)
    meta = dict(format="uniform", config=cfg.to_json(), shape=list(w.shape), column_scale=s is not None,
                n_groups=scale.shape[1], dtype=_dtype_name(w.dtype), zero=zero_format,
                n_outliers=0 if idx is None else idx.numel(), tensors=list(t))
    return t, meta


def _pack_bcq(name: str, module: nn.Module, cfg: QuantConfig) -> tuple[dict, dict]:
    """Tensors and metadata of one BCQLinear: binary planes at 1 bit, alpha at scale_dtype."""
    alpha, binary = getattr(module, "alpha", None), getattr(module, "binary", None)
    if alpha is None or binary is None:
        raise ValueError(f"{name}: quant_state says BCQ but the module is a {type(module).__name__}, "
                         "not a workbench.quant.bcq.BCQLinear")
    alpha, binary = alpha.detach().cpu(), binary.detach().cpu()
    if not bool(((binary == 1) | (binary == -1)).all()):
        raise ValueError(f"{name}: BCQ binary planes must hold only -1 and +1")
    t = {f"{name}.binary": pack_bits((binary > 0).to(torch.uint8), 1),
         f"{name}.alpha": _compact(alpha, cfg.scale_dtype)}
    offset = getattr(module, "offset", None)
    if offset is not None:
        t[f"{name}.offset"] = _compact(offset.detach().cpu(), cfg.scale_dtype)
    meta = dict(format="bcq", config=cfg.to_json(), shape=list(binary.shape[1:]), offset=offset is not None,
                planes=binary.shape[0], n_groups=alpha.shape[2], group_size=module.group_size,
                dtype=_dtype_name(alpha.dtype), binary_dtype=_dtype_name(binary.dtype), tensors=list(t))
    return t, meta


def _dedupe(state: dict[str, torch.Tensor], prefer: set[str]) -> tuple[list[str], dict[str, str]]:
    """Names to store (one per shared tensor) and {alias: stored name} (save_pretrained-style ties);
    a name in `prefer` (a quantized weight) is the one kept when it shares its tensor."""
    groups: dict[tuple, list[str]] = {}
    for k, v in state.items():
        key = (v.device, v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), v.stride(), v.dtype)
        key = key if v.numel() else k                          # empty tensors share no data, whatever their pointer
        groups.setdefault(key, []).append(k)
    keep, aliases = [], {}
    for names in groups.values():
        head = next((n for n in names if n in prefer), names[0])
        keep.append(head)
        aliases.update({n: head for n in names if n != head})
    return keep, aliases


# ----------------------------------------------------------------------------- save / load

def check_weights_only(model: nn.Module, what: str) -> None:
    """Refuse a model whose activations or KV cache are rounded at run time (`runtime_quant`):
    a checkpoint holds weights, and SmoothQuant's weights are only right with their input scaling."""
    runtime = {k: v for k, v in getattr(model, "runtime_quant", {}).items() if v}
    if runtime:
        raise ValueError(f"{what} writes quantized weights only, and this model also rounds its {' and '.join(runtime)} "
                         "at run time (quantize_activations / quantize_kv_cache; SmoothQuant's scaled weights need "
                         f"their input scaling): {what} the weight-only model, and re-apply the run-time rounding after loading")


@torch.no_grad()
def save_quantized(model: nn.Module, folder: str | os.PathLike, tokenizer=None) -> Path:
    """Write `model` (from `quantize_model`) as a bit-packed checkpoint folder and return its path.

    Each module of `model.quant_state` is stored packed (see the module docstring), every other
    state-dict tensor once in unquantized.safetensors, plus workbench_quant.json, the model's
    config.json when it has a Hugging Face config, and the tokenizer if given, with a sha256 of
    every tensor. Written to a temporary folder beside `folder` and renamed into place (see the
    module docstring for what an interrupted save leaves); an existing workbench checkpoint at
    `folder` is replaced, any other existing non-empty folder is refused (FileExistsError).
    """
    state = getattr(model, "quant_state", None)
    if not isinstance(state, dict):
        raise ValueError(f"this {type(model).__name__} has no quant_state: quantize it with quantize_model "
                         "first (workbench.quant.quantize_model returns a model that save_quantized can pack)")
    check_weights_only(model, "save_quantized")
    folder = Path(folder).expanduser()
    _recover(folder)                                           # a killed earlier save: its old checkpoint back
    if folder.exists():
        if not folder.is_dir():
            raise FileExistsError(f"{folder} exists and is not a folder")
        if any(folder.iterdir()) and not (folder / META_FILE).exists():
            raise FileExistsError(f"{folder} exists and is not a workbench checkpoint; refusing to replace it. "
                                  "Choose another folder or remove it yourself")
    modules = dict(model.named_modules())
    sd = model.state_dict()
    qtensors, qmeta, qkeys = {}, {}, set()
    for name, entry in state.items():
        if name not in modules:
            raise ValueError(f"quant_state names {name!r}, which is not a module of this model")
        if isinstance(entry, QuantizedWeight):
            t, meta = _pack_uniform(name, modules[name], entry)
            qkeys.add(f"{name}.weight")
        elif isinstance(entry, QuantConfig) and entry.method == "bcq":
            t, meta = _pack_bcq(name, modules[name], entry)
            qkeys.update(t)                                    # alpha, binary and, with bcq_offset, the offset
        else:
            raise TypeError(f"quant_state[{name!r}] is a {type(entry).__name__}; expected a QuantizedWeight "
                            "or a QuantConfig(method='bcq')")
        qtensors.update(t)
        qmeta[name] = meta
    keep, aliases = _dedupe(sd, qkeys)
    plain, seen = {}, set()
    for k in keep:
        if k in qkeys:
            continue
        v = sd[k].detach().cpu().contiguous()
        ptr = v.untyped_storage().data_ptr()
        plain[k] = v.clone() if ptr in seen else v             # distinct views of one storage: copy
        seen.add(ptr)
    hf_config = getattr(model, "config", None)
    checksums = {QUANT_FILE: {k: _tensor_sha256(v) for k, v in qtensors.items()},
                 PLAIN_FILE: {k: _tensor_sha256(v) for k, v in plain.items()}}
    meta = dict(format=FORMAT, version=VERSION, bit_order="lsb-first", modules=qmeta, aliases=aliases,
                hf_config=hasattr(hf_config, "save_pretrained"), torch_version=torch.__version__,
                checksums=checksums)

    def write(tmp: Path) -> None:
        save_file(qtensors, tmp / QUANT_FILE, metadata={"format": FORMAT})
        save_file(plain, tmp / PLAIN_FILE, metadata={"format": "pt"})
        if meta["hf_config"]:
            config = copy.deepcopy(hf_config)
            config.architectures = [type(model).__name__]         # as save_pretrained records it
            config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))      # last: marks the folder complete

    return write_folder(folder, write)


def write_folder(folder: Path, write) -> Path:
    """Fill a new folder with `write(tmp)` beside `folder`, then rename it into place (the old one
    set aside, then deleted): a failure at any point leaves the previous folder whole."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-{os.getpid()}-"))
    aside = folder.with_name(f".{folder.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        write(tmp)
        if folder.exists():
            os.replace(folder, aside)
        os.replace(tmp, folder)
    finally:
        _finish_swap(folder, tmp, aside)
    return folder


def _unpack_uniform(t: dict, name: str, m: dict) -> tuple[torch.Tensor, QuantizedWeight]:
    """The dequantized weight (outliers restored, in its saved dtype) and its QuantizedWeight."""
    cfg = QuantConfig.from_json(m["config"])
    out, cols = m["shape"]
    codes = unpack_bits(t[f"{name}.codes"], cfg.bits, out * cols).view(out, cols)
    scale = t[f"{name}.scale"].float()
    if m["zero"] == "implied":
        zero = torch.full_like(scale, (cfg.maxq + 1) / 2)
    elif m["zero"] == "packed":
        zero = unpack_bits(t[f"{name}.zero"], cfg.bits, scale.numel()).view_as(scale).float()
    else:
        zero = t[f"{name}.zero"].float()
    w = dequantize(codes, scale, zero, cfg)
    qw = QuantizedWeight(cfg, scale, zero)
    if m.get("column_scale"):                      # AWQ: the codes hold W diag(s)
        qw.column_scale = t[f"{name}.column_scale"].float()
        w = w / qw.column_scale
    if m["n_outliers"]:
        idx, val = t[f"{name}.outlier_index"].long(), t[f"{name}.outlier_value"]
        w.view(-1)[idx] = val.float()
        qw.outlier_index, qw.outlier_value = idx, val.float()
    return w.to(getattr(torch, m["dtype"])), qw


def _build_model(folder: Path, meta: dict) -> nn.Module:
    if not meta.get("hf_config"):
        raise ValueError(f"{folder} was saved from a model without a Hugging Face config, so its architecture "
                         "cannot be rebuilt: pass a freshly built instance, load_quantized(folder, model=...)")
    import transformers

    try:
        from transformers.initialization import no_init_weights            # transformers 5
    except ImportError:                                                     # pragma: no cover
        from transformers.modeling_utils import no_init_weights            # transformers 4
    config = transformers.AutoConfig.from_pretrained(folder)
    arch = (config.architectures or [""])[0]
    # Every parameter is then assigned from the checkpoint (load_quantized's load_state_dict
    # refuses a missing one), so their random initialization (half the build time) is skipped.
    with no_init_weights():
        if arch.endswith("ForCausalLM"):
            return transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        if arch and isinstance(getattr(transformers, arch, None), type):          # e.g. BertForMaskedLM
            return getattr(transformers, arch)._from_config(config, dtype=torch.float32)
        return transformers.AutoModel.from_config(config, dtype=torch.float32)


@torch.no_grad()
def load_quantized(folder: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Load a checkpoint written by `save_quantized`: the model in eval mode with `quant_state` set.

    The architecture is rebuilt from config.json (AutoModelForCausalLM for *ForCausalLM, else the
    named transformers class, else AutoModel; in float32), or `model`, a fresh instance of the
    saved architecture, is filled (needed for models saved without a config). Quantized weights are unpacked and dequantized (outliers put back), BCQ modules rebuilt as
    BCQLinear, tied weights re-tied: the state dict is bit-identical to the saved model's.
    Every tensor is checked against its recorded sha256 first (format version 2 on): a corrupted
    or truncated file is a ValueError naming the file and the tensor.
    """
    folder = Path(folder).expanduser()
    meta = _checkpoint_json(folder)
    if model is None:
        model = _build_model(folder, meta)
    to_linear(model)                           # GPT-2's Conv1D: saved as the nn.Linear quantize_model made
    qt = _read_tensors(folder, QUANT_FILE, meta)
    sd = _read_tensors(folder, PLAIN_FILE, meta)
    quant_state = {}
    for name, m in meta["modules"].items():
        if m["format"] == "uniform":
            sd[f"{name}.weight"], quant_state[name] = _unpack_uniform(qt, name, m)
        elif m["format"] == "bcq":
            q, (out, cols) = m["planes"], m["shape"]
            binary = unpack_bits(qt[f"{name}.binary"], 1, q * out * cols).view(q, out, cols)
            binary = (binary.to(torch.int8) * 2 - 1).to(getattr(torch, m["binary_dtype"]))
            alpha = qt[f"{name}.alpha"].to(getattr(torch, m["dtype"]))
            offset = qt[f"{name}.offset"].float() if m.get("offset") else None
            linear = model.get_submodule(name)
            layer = BCQLinear(alpha, binary, m["group_size"], getattr(linear, "bias", None), offset)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, layer)
            sd[f"{name}.alpha"], sd[f"{name}.binary"] = alpha, binary
            if offset is not None:
                sd[f"{name}.offset"] = offset
            quant_state[name] = QuantConfig.from_json(m["config"])
        else:
            raise ValueError(f"{folder}: module {name} has unknown format {m['format']!r}")
    for alias, head in meta["aliases"].items():
        sd[alias] = sd[head]
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"{folder} does not match the model's architecture: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()                    # re-ties only what the config ties
    model.quant_state = quant_state
    return model.eval()


# ----------------------------------------------------------------------------- sizes

def _ideal_bytes(m: dict) -> int:
    """Bytes a perfect packing of one module needs (see `packed_size`)."""
    cfg = QuantConfig.from_json(m["config"])
    out, cols = m["shape"]
    n_params, s = out * m["n_groups"], _nbytes(cfg.scale_dtype)
    if m["format"] == "bcq":
        return math.ceil(m["planes"] * out * cols / 8) + (m["planes"] + bool(m.get("offset"))) * n_params * s
    zero = 0 if cfg.symmetric else (math.ceil(n_params * cfg.bits / 8) if cfg.round_zero else n_params * s)
    outliers = m["n_outliers"] * (torch.iinfo(INDEX_DTYPE).bits // 8 + _nbytes(m["dtype"]))
    columns = cols * s if m.get("column_scale") else 0               # AWQ's s, one per input column
    return math.ceil(out * cols * cfg.bits / 8) + n_params * s + zero + outliers + columns


def _tensor_bytes(path: Path) -> dict[str, int]:
    """Bytes of each tensor's data in a safetensors file, from its header."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
    except (struct.error, ValueError) as e:                    # too short, or a cut/garbled JSON header
        raise ValueError(f"{path} is truncated or not a valid safetensors file ({e}); {RESAVE}") from None
    return {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}


def packed_size(folder: str | os.PathLike) -> pd.DataFrame:
    """Ideal against stored bytes of each quantized module of a checkpoint, one row per module.

    Columns: module, format, bits (planes for BCQ), groups (e.g. '4x128+64'), n_weights,
    ideal_bytes, stored_bytes (the module's tensors in quantized.safetensors), overhead
    (stored / ideal - 1). Ideal, uniform: ceil(n*bits/8) codes + out*G scales at scale_dtype +
    zeros (ceil(out*G*bits/8) when integer, out*G at scale_dtype when real, none when symmetric)
    + outliers at 4 + bytes(weight dtype) each; BCQ: ceil(q*n/8) + q*out*G (+ out*G offsets) at scale_dtype.
    `df.attrs` holds the whole-file comparison: file_bytes (quantized.safetensors on disk, its
    JSON header included), ideal_bytes (sum over modules), file_overhead, header_bytes.
    """
    folder = Path(folder).expanduser()
    meta = _checkpoint_json(folder)
    stored = _tensor_bytes(folder / QUANT_FILE)
    rows = []
    for name, m in meta["modules"].items():
        cfg = QuantConfig.from_json(m["config"])
        ideal = _ideal_bytes(m)
        got = sum(stored[k] for k in m["tensors"])
        rows.append(dict(module=name, format=m["format"], bits=cfg.bits, groups=cfg.describe_groups(m["shape"][1]),
                         n_weights=m["shape"][0] * m["shape"][1], ideal_bytes=ideal, stored_bytes=got,
                         overhead=got / ideal - 1))
    df = pd.DataFrame(rows, columns=["module", "format", "bits", "groups", "n_weights", "ideal_bytes",
                                     "stored_bytes", "overhead"])
    file_bytes, ideal = (folder / QUANT_FILE).stat().st_size, int(df.ideal_bytes.sum())
    df.attrs.update(file_bytes=file_bytes, ideal_bytes=ideal, header_bytes=file_bytes - sum(stored.values()),
                    file_overhead=file_bytes / ideal - 1 if ideal else float("nan"))
    return df
