import pytest

import workbench
from workbench.cache import ResultCache, atomic_path, atomic_write_text, cache_key, cached
from workbench.quant import QuantConfig


@pytest.fixture
def cache(tmp_path):
    return ResultCache(tmp_path / "results")


PARTS = {"what": "perplexity", "model": {"name": "tiny", "path": "model.safetensors:123"},
         "spec": QuantConfig(bits=4, group_size=128), "corpus": "lee", "seqlen": 512, "seed": 0}


def test_second_call_reads_the_cache(cache):
    calls = []
    compute = lambda: calls.append(1) or {"ppl": 33.5}
    assert cached(PARTS, compute, cache) == {"ppl": 33.5}
    assert cached(dict(PARTS), compute, cache) == {"ppl": 33.5}
    assert len(calls) == 1


@pytest.mark.parametrize("change", [
    {"model": {"name": "tiny", "path": "model.safetensors:124"}},
    {"spec": QuantConfig(bits=3, group_size=128)},
    {"spec": QuantConfig(bits=4, group_size=64)},
    {"spec": QuantConfig(bits=4, group_size=128, symmetric=True)},
    {"corpus": "wiki"},
    {"seqlen": 256},
    {"seed": 1},
])
def test_any_changed_input_misses(cache, change):
    calls = []
    cached(PARTS, lambda: calls.append("a") or 1, cache)
    assert cached({**PARTS, **change}, lambda: calls.append("b") or 2, cache) == 2
    assert calls == ["a", "b"]


def test_library_version_is_part_of_the_key(monkeypatch):
    before = cache_key(PARTS)
    monkeypatch.setattr(workbench, "__version__", "999.0")
    assert cache_key(PARTS) != before


def test_key_ignores_dict_order_but_not_values():
    assert cache_key({"a": 1, "b": 2}) == cache_key({"b": 2, "a": 1})
    assert cache_key({"a": 1.0}) != cache_key({"a": 1.0000001})


def test_a_failing_computation_stores_nothing(cache):
    def boom():
        raise RuntimeError("interrupted")
    with pytest.raises(RuntimeError):
        cached(PARTS, boom, cache)
    assert cache_key(PARTS) not in cache
    assert not cache.root.exists() or not any(p.is_file() for p in cache.root.rglob("*"))


def test_no_cache_env_recomputes(cache, monkeypatch):
    calls = []
    cached(PARTS, lambda: calls.append(1) or 1, cache)
    monkeypatch.setenv("WORKBENCH_NO_CACHE", "1")
    cached(PARTS, lambda: calls.append(1) or 1, cache)
    assert len(calls) == 2


def test_unhashable_key_parts_are_a_clear_error():
    import torch
    with pytest.raises(TypeError, match="record.key"):
        cache_key({"model": torch.nn.Linear(2, 2)})


def test_atomic_path_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("half-writ")
            raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_dir_replaces_only_on_success(tmp_path):
    import pytest

    from workbench.cache import atomic_dir

    target = tmp_path / "folder"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert [p.name for p in tmp_path.iterdir()] == ["folder"] and (target / "old.txt").exists()
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]


def test_a_corrupt_entry_is_reported_with_its_path_and_recomputed(cache):
    from workbench.cache import cache_key

    parts = {"what": "corrupt", "x": 1}
    assert cache.get_or_compute(parts, lambda: 41) == 41
    path = cache.path(cache_key(parts))
    path.write_bytes(path.read_bytes()[:7])                # truncated on disk
    with pytest.warns(UserWarning, match=f"{path.name}.*cannot be read.*recomputing"):
        assert cache.get_or_compute(parts, lambda: 42) == 42
    assert cache.get_or_compute(parts, lambda: 43) == 42    # the recomputed value was stored again


def test_atomic_writes_get_the_usual_permissions_not_the_temporary_files(tmp_path):
    import os
    import stat

    from workbench.cache import atomic_dir, atomic_write_text

    mask = os.umask(0o022)
    try:
        import workbench.cache as cache_module

        old, cache_module._UMASK = cache_module._UMASK, 0o022
        atomic_write_text(tmp_path / "a.json", "{}")
        with atomic_dir(tmp_path / "d") as d:
            (d / "x").write_text("x")
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644     # mkstemp made it 0600
        assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755          # mkdtemp made it 0700
    finally:
        cache_module._UMASK = old
        os.umask(mask)


def test_a_config_field_added_later_keys_only_when_set():
    """GPTQConfig.true_sequential came after results were stored under GPTQ configs: at its default
    it is no part of a key (those results stay found); set, it is (they are not mistaken for it)."""
    from dataclasses import asdict

    from workbench.cache import _jsonable

    cfg = QuantConfig(bits=3, method="gptq", act_order=True)
    before = {k: v for k, v in asdict(cfg).items() if k != "true_sequential"}   # what keys held until then
    assert _jsonable(cfg) == _jsonable({"__type__": "GPTQConfig", **before})
    assert cache_key({"spec": cfg}) != cache_key({"spec": QuantConfig(bits=3, method="gptq", act_order=True,
                                                                        true_sequential=True)})
