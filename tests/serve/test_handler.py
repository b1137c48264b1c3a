"""Routes over real HTTP: answers in the request's form, and a 4xx with a clear message for
every kind of bad request, after which the server keeps serving."""

import io
import json
import socket

import numpy as np
import pytest

import juicepy as jp
from juicepy.serve import ModelServer, definition_sha256


@pytest.fixture(params=[32, 1], ids=["batched", "unbatched"])
def server(request, checkpoint):
    with ModelServer(checkpoint[0], "numpy", port=0, max_batch=request.param, max_body_bytes=1 << 16) as srv:
        yield srv


@pytest.fixture
def client(server, connect):
    return connect(server)


@pytest.mark.parametrize("rows", [1, 5, 40])  # 40: more rows than max_batch, run on their own
def test_predict_answers_in_the_form_it_was_asked(client, checkpoint, rows, npy_bytes):
    net = checkpoint[1]
    x = np.random.default_rng(rows).standard_normal((rows, 8)).astype(np.float32)
    expected = net.transform("numpy", x)  # a lone request runs as one transform: bit for bit
    np.testing.assert_array_equal(client.predict_json(x), expected)
    np.testing.assert_array_equal(client.predict_json(x, wrap=True), expected)
    status, response, data = client.request("POST", "/predict", npy_bytes(x), "application/x-npy")
    assert status == 200 and response.getheader("Content-Type") == "application/x-npy"
    np.testing.assert_array_equal(np.load(io.BytesIO(data)), expected)


def test_health_describes_the_served_network(client, checkpoint, server):
    doc = client.health()
    assert doc["status"] == "ok"
    assert doc["definition_sha256"] == definition_sha256(checkpoint[1])
    assert doc["inputs"] == [{"shape": [8], "dtype": "float32"}]
    assert doc["outputs"] == [{"shape": [4], "dtype": "float32"}]
    assert doc["backend"] == "numpy" and doc["swaps"] == 0 and doc["checkpoint"]["step"] == 0
    assert doc["checkpoint"]["path"] == str(checkpoint[0])
    assert doc["micro_batching"]["on"] == (server.max_batch > 1)


F64 = io.BytesIO()
np.save(F64, np.zeros((2, 8)))
F64 = F64.getvalue()
BAD_REQUESTS = [
    # (method, path, body, content type, status, words the message must hold)
    ("POST", "/predict", b"[[1, 2,", "application/json", 400, "malformed JSON"),
    ("POST", "/predict", b"[[1, 2], [3]]", "application/json", 400, "not a rectangular array"),
    ("POST", "/predict", json.dumps([["a"] * 8]).encode(), "application/json", 400, "expected numbers"),
    ("POST", "/predict", json.dumps([[True] * 8]).encode(), "application/json", 400, "booleans"),
    ("POST", "/predict", json.dumps([[1.0, None] * 4]).encode(), "application/json", 400, "nulls"),
    ("POST", "/predict", json.dumps([[1.0] * 7]).encode(), "application/json", 400,
     "expected shape (batch, 8), got (1, 7)"),
    ("POST", "/predict", json.dumps({"rows": []}).encode(), "application/json", 400, "unknown keys: rows"),
    ("POST", "/predict", json.dumps({}).encode(), "application/json", 400, 'no "inputs" key'),
    ("POST", "/predict", b"[[NaN, 0, 0, 0, 0, 0, 0, 0]]", "application/json", 400, "NaN or Inf"),
    ("POST", "/predict", F64, "application/x-npy", 400, "expected dtype float32, got float64"),
    ("POST", "/predict", F64[:40], "application/x-npy", 400, "malformed .npy"),
    ("POST", "/predict", b"\x00" * 64, "application/octet-stream", 400, "malformed .npy"),
    ("POST", "/predict", b"x=1", "application/x-www-form-urlencoded", 415, "unsupported Content-Type"),
    ("POST", "/predict", b"[" * 70000, "application/json", 413, "over the limit of 65536"),
    ("POST", "/predict", b"[" * 60000, "application/json", 400, "nested too deeply"),
    ("POST", "/predict", b"\xff\xfe[1]", "application/json", 400, "malformed JSON"),
    ("POST", "/predict", b"7", "application/json", 400, "expected shape (batch, 8), got ()"),
    ("GET", "/nowhere", None, None, 404, "no route '/nowhere'"),
    ("GET", "/predict", None, None, 405, "/predict takes POST, not GET"),
    ("POST", "/health", b"{}", "application/json", 405, "/health takes GET, not POST"),
    ("DELETE", "/predict", None, None, 405, "takes POST, not DELETE"),
    ("BREW", "/predict", None, None, 405, "takes POST, not BREW"),
    ("POST", "/swap", b"not json", "application/json", 400, "malformed JSON"),
    ("POST", "/swap", b"{}", "application/json", 400, '{"path": "ck.safetensors"}'),
    ("POST", "/swap", b'{"path": "/no/such/file.safetensors"}', "application/json", 400, "no such checkpoint"),
]


@pytest.mark.parametrize("method,path,body,content_type,status,words", BAD_REQUESTS,
                         ids=[f"{r[4]}-{r[5][:24]}" for r in BAD_REQUESTS])
def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(client, checkpoint, method, path, body,
                                                                   content_type, status, words):
    got, response, data = client.request(method, path, body, content_type)
    assert got == status, data
    doc = json.loads(data)
    assert doc["status"] == status and words in doc["error"], doc["error"]
    if status == 405:
        assert response.getheader("Allow") in ("GET", "POST")
    x = np.ones((2, 8), np.float32)
    np.testing.assert_array_equal(client.predict_json(x), checkpoint[1].transform("numpy", x))


def _raw(server, data: bytes) -> bytes:
    """Send ``data``, hang up the sending side, read the whole answer."""
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_post_without_length_or_chunked_gets_411(server):
    for headers in (b"", b"Transfer-Encoding: chunked\r\n"):
        reply = _raw(server, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + headers
                     + b"Connection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 411") and b"Content-Length" in reply


def test_bad_content_length_and_short_body(server, connect):
    reply = _raw(server, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: lots\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400") and b"not a byte count" in reply
    # the client hangs up after 4 of 100 promised bytes: the server answers what it can and lives on
    reply = _raw(server, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n[[1]")
    assert reply.startswith(b"HTTP/1.1 400") and b"body ended after 4 of 100 bytes" in reply
    assert connect(server).health()["status"] == "ok"


@pytest.mark.parametrize("head", [b"GET /health", b"GET /predict", b"GET /nowhere", b"DELETE /health"])
def test_a_body_the_server_does_not_read_is_never_taken_for_the_next_request(server, head):
    """A GET's body (legal HTTP, never read here) once stayed on the connection and was parsed as
    the next request: a request hidden in it ran (here a /swap). Now such a connection closes
    after its one answer."""
    hidden = b'POST /swap HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}'
    reply = _raw(server, head + b" HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(hidden) + hidden)
    assert reply.count(b"HTTP/1.1 ") == 1 and b"Connection: close" in reply, reply
    assert b'{"path": "ck.safetensors"}' not in reply


def test_head_gets_the_headers_of_a_get_and_no_body(client):
    status, response, data = client.request("HEAD", "/health")
    assert status == 200 and data == b"" and int(response.getheader("Content-Length")) > 0
    status, response, data = client.request("HEAD", "/predict")
    assert status == 405 and data == b"" and response.getheader("Allow") == "POST"
    assert client.health()["status"] == "ok"  # the connection is still in step


def test_nan_passes_with_the_guard_off(checkpoint, connect, npy_bytes):
    with ModelServer(checkpoint[0], "numpy", port=0, check_finite=False) as server:
        client = connect(server)
        x = np.full((1, 8), np.nan, np.float32)
        status, _, data = client.request("POST", "/predict", npy_bytes(x), "application/x-npy")
        assert status == 200 and np.isnan(np.load(io.BytesIO(data))).all()
        assert client.health()["finite_check"] is False


def test_multi_input_network_takes_a_list_per_input(tmp_path, connect, npy_bytes):
    a, b = jp.Input((3,)), jp.Input((2,))
    net = jp.Network(inputs=[a, b], outputs=jp.concat(a, b))
    jp.save(tmp_path / "two.safetensors", net)
    with ModelServer(tmp_path / "two.safetensors", "numpy", port=0) as server:
        client = connect(server)
        xa, xb = np.ones((2, 3), np.float32), np.zeros((2, 2), np.float32)
        status, _, data = client.request("POST", "/predict", json.dumps({"inputs": [xa.tolist(), xb.tolist()]}),
                                         "application/json")
        assert status == 200
        np.testing.assert_array_equal(json.loads(data)["outputs"], np.concatenate([xa, xb], axis=1))
        status, _, data = client.request("POST", "/predict", json.dumps([xa.tolist()]), "application/json")
        assert status == 400 and b"takes 2 inputs" in data
        status, _, data = client.request("POST", "/predict", npy_bytes(xa), "application/x-npy")
        assert status == 415 and b"send JSON" in data
        status, _, data = client.request("POST", "/predict", json.dumps([xa.tolist(), xb[:1].tolist()]),
                                         "application/json")
        assert status == 400 and b"different row counts" in data
