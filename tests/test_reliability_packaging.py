"""The lower bounds in pyproject.toml are at least the first versions that have what seqrl uses,
and the installed versions satisfy them. (Installing every lower bound in a fresh environment is
not done here: see docs/reliability.md.)"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

NEEDS = {
    "gymnasium": ("1.1", "gymnasium.vector.AutoresetMode (same-step autoreset), reset_mask"),
    "torch": ("2.1", "F.scaled_dot_product_attention(scale=...), torch.compile, CPU bf16 autocast"),
    "safetensors": ("0.4", "safetensors.torch.save_file / load_file(device=...)"),
    "minari": ("0.5", "minari.create_dataset_from_buffers with the hdf5 extra"),
    "numpy": ("1.24", "numpy.random.Generator state dicts, NPY typing"),
    "tyro": ("0.8", "tyro.conf.UseAppendAction, tyro.conf.Positional"),
    "pyyaml": ("6.0", "yaml.safe_load / safe_dump"),
}
"""Package -> (first version with what seqrl uses, what that is)."""


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _bounds() -> dict[str, str]:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    with open(PYPROJECT, "rb") as handle:
        dependencies = tomllib.load(handle)["project"]["dependencies"]
    bounds = {}
    for item in dependencies:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?>=([0-9.]+)", item.replace(" ", ""))
        assert match, f"{item}: every dependency needs a lower bound written NAME>=VERSION"
        bounds[match.group(1).lower()] = match.group(3)
    return bounds


@pytest.mark.parametrize("package", sorted(NEEDS))
def test_lower_bounds_cover_what_the_code_uses(package):
    needed, what = NEEDS[package]
    bound = _bounds()[package]
    assert _version(bound) >= _version(needed), f"{package}>={bound} lacks {what}: need {needed}"


def test_installed_versions_satisfy_the_bounds():
    for package, bound in _bounds().items():
        installed = importlib.metadata.version(package)
        assert _version(installed) >= _version(bound), (package, installed, bound)


def test_the_features_named_exist_in_the_installed_versions():
    import gymnasium.vector
    import torch.nn.functional as F
    import tyro

    assert hasattr(gymnasium.vector, "AutoresetMode")
    assert "scale" in F.scaled_dot_product_attention.__doc__
    assert hasattr(tyro.conf, "UseAppendAction") and hasattr(tyro.conf, "Positional")
