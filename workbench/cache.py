"""Where the workbench keeps things on disk, atomic writes, and the results cache.

    from workbench.cache import cached

    df = cached({"what": "perplexity", "model": record.key, "bits": 4, "seed": 0},
                lambda: expensive_dataframe())

Layout under $WORKBENCH_HOME (default ~/.cache/workbench):
    downloads/   verified PyPI artifacts (wheels, sdists)
    assets/      members extracted from them, one folder per asset
    models/      converted model folders (e.g. a GGUF dequantized to fp32 safetensors)
    results/     the results cache; $WORKBENCH_RESULTS overrides its location
    file_hashes.json  sha256 of files already hashed, by path, size, mtime and inode (see `file_sha256`)

Every result is keyed by a sha256 of the canonical JSON of all that determines it, plus the
workbench version, and written to a temporary file that is renamed into place, so a reader
never sees a half-written entry. An entry that cannot be read back (a truncated or corrupt file)
is reported with its path and recomputed. Set WORKBENCH_NO_CACHE=1 to always recompute.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pickle
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator


def workbench_home() -> Path:
    """The root folder for downloads, assets, converted models and results."""
    return Path(os.environ.get("WORKBENCH_HOME", Path.home() / ".cache" / "workbench")).expanduser()


def results_dir() -> Path:
    """The results-cache folder: $WORKBENCH_RESULTS, else $WORKBENCH_HOME/results."""
    env = os.environ.get("WORKBENCH_RESULTS")
    return Path(env).expanduser() if env else workbench_home() / "results"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()   # read once: a temporary file is created 0600, a written one gets the usual mode


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    A failure (or Ctrl-C) inside the block removes the temporary file and leaves `path` as it
    was, so nothing half-written is ever found at `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it replaces `path` only if the block succeeds.

    A failure inside the block removes the temporary folder and leaves `path` as it was, so a
    half-built folder is never found at `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically and return the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        # a config that names fields ADDED_LATER writes them only when set (QuantConfig.to_json), so keys stay
        plain = obj.to_json() if hasattr(obj, "ADDED_LATER") else dataclasses.asdict(obj)
        return {"__type__": type(obj).__name__, **_jsonable(plain)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, float):
        return repr(obj)  # exact, and NaN/inf safe
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(
        f"cache key part {obj!r} of type {type(obj).__name__} is not JSON-like; "
        "pass strings, numbers, lists, dicts or dataclasses (e.g. a model's record.key, not the model)"
    )


def cache_key(parts: dict) -> str:
    """sha256 hex digest of the canonical JSON of `parts` plus the workbench version."""
    from workbench import __version__

    payload = {"workbench_version": __version__, "parts": _jsonable(parts)}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class ResultCache:
    """A folder of pickled results named by their key; entries are written atomically."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else results_dir()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.pkl"

    def get(self, key: str, default: Any = None) -> Any:
        """The stored value, or `default` when there is none or it cannot be read (then a warning
        names the file; the next `put` replaces it)."""
        path = self.path(key)
        if not path.exists():
            return default
        try:
            with open(path, "rb") as f:
                return pickle.load(f)["value"]
        except Exception as e:                 # truncated, corrupt or written by an incompatible version
            warnings.warn(f"the cached result {path} cannot be read ({type(e).__name__}: {e}); "
                          "recomputing it", stacklevel=2)
            return default

    def put(self, key: str, value: Any, parts: dict | None = None) -> None:
        blob = pickle.dumps({"parts": _jsonable(parts or {}), "value": value})
        atomic_write_bytes(self.path(key), blob)

    def __contains__(self, key: str) -> bool:
        return self.path(key).exists()

    def get_or_compute(self, parts: dict, compute: Callable[[], Any]) -> Any:
        """Return the cached value for `parts`, computing and storing it on a miss."""
        key = cache_key(parts)
        missing = object()
        if os.environ.get("WORKBENCH_NO_CACHE") != "1":
            value = self.get(key, missing)
            if value is not missing:
                return value
        value = compute()
        self.put(key, value, parts)
        return value


def cached(parts: dict, compute: Callable[[], Any], cache: ResultCache | None = None) -> Any:
    """Return `compute()`, cached on disk under the key of `parts` (see `cache_key`)."""
    return (cache or ResultCache()).get_or_compute(parts, compute)


# ----------------------------------------------------------------------------- content hashes

FILE_HASHES = "file_hashes.json"   # under workbench_home(): {abs path: [size, mtime_ns, inode, sha256]}


def _hash_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, remembered by (path, size, mtime, inode) so a recheck costs a stat.

    Rewriting a file (save_pretrained, a copy, an edit) changes its mtime or inode, so it is hashed
    again; an unchanged file is hashed once per WORKBENCH_HOME. The memo is one JSON file written
    atomically; losing it only costs re-hashing.
    """
    path = Path(path).resolve()
    st = path.stat()
    stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
    memo_path = workbench_home() / FILE_HASHES
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    entry = memo.get(str(path))
    if entry and entry[:3] == stamp:
        return entry[3]
    digest = _hash_file(path)
    memo[str(path)] = stamp + [digest]
    atomic_write_text(memo_path, json.dumps(memo, indent=0))
    return digest


def folder_fingerprint(folder: str | os.PathLike, suffixes: tuple[str, ...] | None = None) -> str:
    """sha256 over the names and contents of the files directly in `folder` (hidden files and
    sub-folders left out; only `suffixes` if given): the same for two copies of a folder on any
    machine or path, different as soon as one byte of one file differs."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and (suffixes is None or p.suffix in suffixes))
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()
