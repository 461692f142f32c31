"""What an installed (non-editable) infosam-hf needs besides its modules must be declared as package data."""

import fnmatch
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]


def tracked_data_files() -> list[str]:
    """Non-Python files git tracks under infosam_hf/, relative to the package (untracked ones too, if no git)."""
    package = ROOT / "infosam_hf"
    try:
        out = subprocess.run(["git", "ls-files", "--others", "--cached", "--exclude-standard", "infosam_hf"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
        paths = [str(Path(p).relative_to("infosam_hf")) for p in out]
    except (OSError, subprocess.CalledProcessError):
        paths = [str(p.relative_to(package)) for p in package.rglob("*") if p.is_file()]
    return [p for p in paths if not p.endswith((".py", ".pyc")) and "__pycache__" not in p]


def test_every_data_file_in_the_package_is_declared():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["infosam_hf"]
    data = tracked_data_files()
    assert "templates/infosam_adapter_card.md" in data and "builtin/sam-tiny-general/model.safetensors" in data
    undeclared = [p for p in data if not any(fnmatch.fnmatch(p, g) for g in globs)]
    assert not undeclared, f"add these to [tool.setuptools.package-data] in pyproject.toml: {undeclared}"


def test_the_typing_marker_is_shipped_and_the_license_is_the_declared_one():
    """PEP 561: a type checker reads infosam_hf's annotations only if `py.typed` is installed beside the modules."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["infosam_hf"]
    assert (ROOT / "infosam_hf" / "py.typed").is_file() and "py.typed" in tracked_data_files()
    assert pyproject["project"]["license"] == {"text": "Apache-2.0"}
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text  # the full text, not a one-line pointer


@pytest.mark.slow
def test_the_wheel_carries_the_card_template_and_the_builtin_model(tmp_path):
    pytest.importorskip("setuptools", reason="building the wheel without isolation needs setuptools installed")
    source = tmp_path / "source"  # setuptools builds in place (build/): keep the checkout clean
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "infosam_hf", source / "infosam_hf", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("infosam_hf-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "infosam_hf/py.typed" in names
    for path in tracked_data_files():
        assert f"infosam_hf/{path}" in names
