import gzip
import hashlib
import http.server
import threading
from functools import partial

import numpy as np
import pytest

from juicepy.data import DatasetUnavailable, load_mnist, read_idx


def write_idx(path, array):
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    array = np.asarray(array)
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(data)


def _fake_mnist(folder, n=12, gz=True):
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    images = {s: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for s in ("train", "t10k")}
    labels = {s: rng.integers(0, 10, n).astype(np.uint8) for s in ("train", "t10k")}
    for s in ("train", "t10k"):
        write_idx(folder / f"{s}-images-idx3-ubyte{sfx}", images[s])
        write_idx(folder / f"{s}-labels-idx1-ubyte{sfx}", labels[s])
    return images, labels


@pytest.mark.parametrize("dtype", [np.uint8, ">i4", ">f4"])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, dtype, gz):
    array = (np.arange(24).reshape(2, 3, 4) * 3).astype(dtype)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    write_idx(path, array)
    got = read_idx(path)
    assert got.shape == (2, 3, 4)
    np.testing.assert_array_equal(got, array)


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)
    truncated = tmp_path / "short"
    write_idx(truncated, np.zeros((4, 4), np.uint8))
    truncated.write_bytes(truncated.read_bytes()[:-3])
    with pytest.raises(ValueError, match=r"header says \(4, 4\)"):
        read_idx(truncated)


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_from_local_folder(tmp_path, monkeypatch, gz):
    monkeypatch.setenv("JUICEPY_CACHE", str(tmp_path / "cache"))
    images, labels = _fake_mnist(tmp_path, gz=gz)
    train, test = load_mnist("mnist", data_dir=tmp_path, download=False)
    assert train.x.shape == (12, 1, 28, 28) and train.x.dtype == np.float32
    np.testing.assert_allclose(train.x[:, 0] * 255, images["train"], atol=1e-4)
    np.testing.assert_array_equal(test.y, labels["t10k"])


def test_missing_files_without_download(tmp_path, monkeypatch):
    monkeypatch.setenv("JUICEPY_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DatasetUnavailable, match="not found in .* and downloading is off"):
        load_mnist("fashion-mnist", data_dir=tmp_path, download=False)


@pytest.fixture
def local_server(tmp_path):
    """An HTTP server on loopback serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def _sources(root, url, corrupt=None):
    md5 = {}
    for path in root.iterdir():
        md5[path.name] = hashlib.md5(path.read_bytes()).hexdigest()
    if corrupt:
        md5[corrupt] = "0" * 32
    return {"mnist": {"url": url, "md5": md5}}


def test_download_verifies_checksums_and_caches(local_server, tmp_path, monkeypatch):
    root, url = local_server
    monkeypatch.setenv("JUICEPY_CACHE", str(tmp_path / "cache"))
    images, _ = _fake_mnist(root)
    train, _ = load_mnist("mnist", sources=_sources(root, url))
    np.testing.assert_allclose(train.x[:, 0] * 255, images["train"], atol=1e-4)
    assert (tmp_path / "cache" / "mnist" / "train-images-idx3-ubyte.gz").is_file()
    for f in root.iterdir():  # the server goes away: the cache answers
        f.unlink()
    train2, _ = load_mnist("mnist", sources=_sources(root, url), download=False)
    np.testing.assert_array_equal(train.x, train2.x)


def test_checksum_mismatch_keeps_nothing(local_server, tmp_path, monkeypatch):
    root, url = local_server
    cache = tmp_path / "cache"
    monkeypatch.setenv("JUICEPY_CACHE", str(cache))
    _fake_mnist(root)
    with pytest.raises(DatasetUnavailable, match="checksum mismatch"):
        load_mnist("mnist", sources=_sources(root, url, corrupt="train-images-idx3-ubyte.gz"))
    assert not list((cache / "mnist").glob("train-images*"))


def test_unreachable_host_gives_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("JUICEPY_CACHE", str(tmp_path / "cache"))
    sources = {"mnist": {"url": "http://127.0.0.1:9/", "md5": {"train-images-idx3-ubyte.gz": "x"}}}
    with pytest.raises(DatasetUnavailable, match="downloading .* failed .*--data DIR"):
        load_mnist("mnist", sources=sources)


def test_dimensions_whose_product_overflows_int64_are_refused(tmp_path):
    path = tmp_path / "huge-idx3-ubyte"
    dims = (1 << 16,) * 4  # 2**64 elements: np.prod wraps to 0 and would "match" an empty body
    path.write_bytes(bytes([0, 0, 0x08, 4]) + b"".join(d.to_bytes(4, "big") for d in dims))
    with pytest.raises(ValueError, match=r"IDX header says \(65536, 65536, 65536, 65536\) \(18446744073709551636 bytes\)"):
        read_idx(path)
