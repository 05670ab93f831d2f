"""environment.yml must not drift from pyproject.toml and the constraints file that make uses."""

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]


def _constraints():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            pins[re.sub(r"[-_.]+", "-", req.name).lower()] = next(iter(req.specifier)).version
    return pins


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_environment_yml_delegates_to_pip_with_the_same_constraints_and_extras():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict))
    assert "-c constraints.txt" in pip_section
    makefile = (ROOT / "Makefile").read_text()
    editable = [p for p in pip_section if p.startswith("-e ")]
    assert len(editable) == 1
    extras = editable[0].split("[", 1)[1].rstrip("]")
    assert f"-e '.[{extras}]'" in makefile, "environment.yml and the Makefile install different extras"
    assert set(extras.split(",")) == set(_pyproject()["optional-dependencies"])
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python"))
    assert SpecifierSet(_pyproject()["requires-python"]).contains(python.split("=")[-1] + ".0")


def test_every_dependency_is_pinned_in_constraints_within_its_range():
    pins = _constraints()
    project = _pyproject()
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    for line in reqs:
        req = Requirement(line)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{req.name} is not pinned in constraints.txt (run `make lock`)"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} violates {req.specifier}"


def test_torch_is_pinned_to_the_local_cpu_wheel_version():
    assert _constraints()["torch"] == "2.13.0"
    assert "torch==2.13.0" in _pyproject()["dependencies"]


def test_installer_tools_are_pinned_and_installed_at_their_pins():
    """`make setup` installs pip, setuptools and wheel from the lock, never "the newest"."""
    from importlib.metadata import version

    pins = _constraints()
    makefile = (ROOT / "Makefile").read_text()
    assert "--upgrade pip" not in makefile
    assert "-c constraints.txt pip setuptools wheel" in makefile
    for tool in ("pip", "setuptools", "wheel"):
        assert tool in pins, f"{tool} is not pinned in constraints.txt"
        assert version(tool) == pins[tool], f"{tool} {version(tool)} installed, {pins[tool]} pinned: run `make setup`"


def test_a_non_editable_install_ships_every_subpackage():
    """pyproject's package list must cover every package folder of workbench (a plain `pip install .`
    once shipped workbench/ without quant/, adapt/ and abilities/)."""
    import fnmatch

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    include = cfg.get("packages", {}).get("find", {}).get("include") if isinstance(cfg.get("packages"), dict) \
        else cfg.get("packages")
    assert include, "pyproject.toml lists no packages"
    packages = sorted(".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "workbench").rglob("__init__.py"))
    assert len(packages) > 1
    missing = [p for p in packages if not any(fnmatch.fnmatchcase(p, pat) for pat in include)]
    assert not missing, f"not shipped by a non-editable install: {missing}"
