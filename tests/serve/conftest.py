"""Helpers for the server tests: small checkpoints and a plain http.client request."""

import http.client
import io
import json

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L

SHAPE = (8,)


def make_net(seed=0, hidden=16, out=4, in_features=SHAPE[0], dtype=np.float32):
    return jp.Network(L.Sequential(L.Linear(hidden), L.Tanh(), L.Linear(out)), (in_features,), dtype=dtype,
                      seed=seed)


@pytest.fixture
def checkpoint(tmp_path):
    """(path, network) of a saved 8 -> 4 network."""
    net = make_net(0)
    path = tmp_path / "ck.safetensors"
    jp.save(path, net)
    return path, net


class Client:
    """One keep-alive connection to a server."""

    def __init__(self, server, timeout=60):
        self.conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)

    def request(self, method, path, body=None, content_type=None, headers=None):
        headers = dict(headers or {})
        if content_type:
            headers["Content-Type"] = content_type
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        if response.getheader("Connection", "").lower() == "close":
            self.conn.close()  # reconnects on the next request
        return response.status, response, data

    def predict_json(self, x, wrap=False):
        doc = {"inputs": x.tolist()} if wrap else x.tolist()
        status, _, data = self.request("POST", "/predict", json.dumps(doc), "application/json")
        assert status == 200, data
        out = json.loads(data)
        return np.asarray(out["outputs"] if wrap else out, np.float32)

    def health(self):
        status, _, data = self.request("GET", "/health")
        assert status == 200, data
        return json.loads(data)

    def close(self):
        self.conn.close()


def npy_bytes(array):
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


@pytest.fixture
def connect():
    """connect(server) -> a Client; every client made is closed after the test."""
    made = []

    def connect(server, timeout=60):
        made.append(Client(server, timeout))
        return made[-1]

    yield connect
    for client in made:
        client.close()


@pytest.fixture(name="npy_bytes")
def npy_bytes_fixture():
    return npy_bytes


@pytest.fixture(name="make_net")
def make_net_fixture():
    return make_net
