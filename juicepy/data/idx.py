"""MNIST-format IDX files: reading, and fetching with checksum verification into a cache."""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from .datasets import Dataset

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

SOURCES = {
    "mnist": {
        "url": "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "md5": {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    },
    "fashion-mnist": {
        "url": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "md5": {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    },
}
_PARTS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


class DatasetUnavailable(RuntimeError):
    """The dataset's files are neither in the given folder nor in the cache, and cannot be fetched."""


def read_idx(path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a NumPy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic {raw[:4]!r})")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX element type 0x{code:02x}")
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = header + math.prod(dims) * dtype.itemsize  # Python ints: no int64 wrap-around
    if len(raw) != expected:
        raise ValueError(f"{path}: IDX header says {dims} ({expected} bytes), file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def md5sum(path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_dir() -> Path:
    return Path(os.environ.get("JUICEPY_CACHE", Path.home() / ".cache" / "juicepy"))


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def fetch(url: str, dest: Path, md5: str, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest`` (atomically), verifying its MD5; a mismatch keeps nothing."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            shutil.copyfileobj(response, out)
        got = md5sum(tmp)
        if got != md5:
            raise DatasetUnavailable(f"{url}: checksum mismatch (md5 {got}, expected {md5}); nothing was kept")
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return dest


def load_mnist(kind: str = "mnist", data_dir=None, download: bool = True,
               sources: dict | None = None) -> tuple[Dataset, Dataset]:
    """MNIST or Fashion-MNIST as (train, test), x float32 (N, 1, 28, 28) in [0, 1].

    Looks in ``data_dir`` (plain or .gz IDX files), then in the cache
    (``$JUICEPY_CACHE``, default ~/.cache/juicepy/KIND); if ``download`` it fetches the missing
    files there, each verified against its published MD5.
    """
    sources = SOURCES if sources is None else sources
    if kind not in sources:
        raise ValueError(f"unknown IDX dataset {kind!r}; known: {', '.join(sources)}")
    source = sources[kind]
    folders = [Path(data_dir)] if data_dir else []
    cache = cache_dir() / kind
    folders.append(cache)
    splits = []
    for split, stems in _PARTS.items():
        arrays = []
        for stem in stems:
            path = next((p for p in (_find(f, stem) for f in folders) if p is not None), None)
            if path is None:
                path = _download(kind, source, stem, cache, download, data_dir)
            arrays.append(read_idx(path))
        images, labels = arrays
        if len(images) != len(labels):
            raise ValueError(f"{kind} {split}: {len(images)} images but {len(labels)} labels")
        x = (images.astype(np.float32) / 255.0)[:, None, :, :]
        splits.append(Dataset(x, labels.astype(np.int64), f"{kind}-{split}", 10))
    return splits[0], splits[1]


def _download(kind, source, stem, cache: Path, download: bool, data_dir) -> Path:
    name = stem + ".gz"
    where = f"{data_dir} or {cache}" if data_dir else str(cache)
    if not download:
        raise DatasetUnavailable(f"{kind}: {stem}[.gz] not found in {where} and downloading is off")
    try:
        return fetch(source["url"] + name, cache / name, source["md5"][name])
    except (urllib.error.URLError, OSError) as err:
        raise DatasetUnavailable(
            f"{kind}: {stem}[.gz] not found in {where}, and downloading {source['url'] + name} failed "
            f"({err}). Put the four IDX files in a folder and pass it with --data DIR.") from err
