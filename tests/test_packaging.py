"""The package: a wheel built from the checkout carries every module, the bundled assets, the pinned
requirements and the `gradviz` command, and works when installed outside the checkout."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from gradviz.config import asset_path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["gradviz", "assets", "pyproject.toml", "setup.py", "README.md",
           "requirements.txt", "requirements-test.txt", "requirements-bench.txt"]


def _pins(name: str) -> list[str]:
    """The requirement lines of a requirements file, comments dropped."""
    lines = (line.split("#", 1)[0].strip() for line in (ROOT / name).read_text().splitlines())
    return [line for line in lines if line]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a clean copy of the checkout (an in-tree build/ can keep files that were removed)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    out = tmp_path_factory.mktemp("wheels")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (found,) = out.glob("gradviz-*.whl")
    return found


def _metadata(whl: zipfile.ZipFile, name: str) -> str:
    (path,) = [n for n in whl.namelist() if n.endswith(f".dist-info/{name}")]
    return whl.read(path).decode()


def test_wheel_has_every_module_the_assets_and_the_kernel_source(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "gradviz").rglob("*.py")}
    assert modules - names == set(), "modules missing from the wheel (a sub-package without __init__.py?)"
    assert "gradviz/engine/kernels/fused_stats.c" in names
    whl = zipfile.ZipFile(wheel)
    for asset in sorted((ROOT / "assets").iterdir()):
        assert _sha(whl.read(f"gradviz/_assets/{asset.name}")) == _sha(asset.read_bytes()), asset.name


def test_wheel_requirements_are_the_requirements_files(wheel):
    meta = Parser().parsestr(_metadata(zipfile.ZipFile(wheel), "METADATA"))
    requires = meta.get_all("Requires-Dist")
    assert [r for r in requires if "extra ==" not in r] == _pins("requirements.txt")
    for extra, file in (("test", "requirements-test.txt"), ("bench", "requirements-bench.txt")):
        assert [r.split(";")[0].strip() for r in requires if f'extra == "{extra}"' in r] == _pins(file)


def test_wheel_declares_the_gradviz_command(wheel):
    entry_points = _metadata(zipfile.ZipFile(wheel), "entry_points.txt")
    assert "[console_scripts]\ngradviz = gradviz.cli:main" in entry_points


def test_setup_env_pins_the_build_backend_of_pyproject():
    """scripts/setup_env.sh installs the package without build isolation: with the backend pyproject names."""
    import tomllib

    backend = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    assert len(backend) == 1 and backend[0] in (ROOT / "scripts" / "setup_env.sh").read_text()


def test_assets_are_found_in_the_checkout():
    assert asset_path() == ROOT / "assets"
    assert asset_path("mnist_cnn.safetensors").is_file()


@pytest.mark.slow
def test_installed_wheel_runs_outside_the_checkout(wheel, tmp_path):
    """`pip install` of the wheel (into a folder on PYTHONPATH): `gradviz list` and a tiny `score` run from
    a folder outside the checkout, with the weights and cards read from the installed package."""
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                           "--target", str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    env = {**os.environ, "PYTHONPATH": str(site), "GRADVIZ_CACHE_DIR": str(tmp_path / "cache")}
    where = subprocess.run([sys.executable, "-c", "import gradviz.config as c; print(c.asset_path())"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert where.stdout.strip() == str(site / "gradviz" / "_assets"), where.stderr
    listed = subprocess.run([str(site / "bin" / "gradviz"), "list"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert "mnist-cnn" in listed.stdout and "msp" in listed.stdout
    scored = subprocess.run([str(site / "bin" / "gradviz"), "score", "--model", "mnist-cnn", "--id", "mnist",
                             "--ood", "noise-uniform", "--methods", "msp", "--limit", "20", "--out", "o"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert scored.returncode == 0, scored.stderr
    assert (tmp_path / "o" / "metrics.csv").read_text().count("noise-uniform,msp") == 1
