"""`python -m juicepy serve` as a process: it answers, and stops cleanly on SIGTERM / SIGINT."""

import json
import os
import signal
import subprocess
import sys
import urllib.request

import numpy as np
import pytest


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_process_answers_and_stops_on_signal(checkpoint, sig):
    path, net = checkpoint
    proc = subprocess.Popen([sys.executable, "-m", "juicepy", "serve", str(path), "--port", "0", "--watch"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        banner = proc.stdout.readline()
        assert "serving" in banner and "watching it" in banner, banner + proc.stderr.read()
        url = banner.split(" on ")[1].split()[0]
        with urllib.request.urlopen(url + "/health", timeout=30) as response:
            assert json.load(response)["inputs"] == [{"shape": [8], "dtype": "float32"}]
        x = np.ones((2, 8), np.float32)
        request = urllib.request.Request(url + "/predict", data=json.dumps({"inputs": x.tolist()}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            np.testing.assert_array_equal(np.float32(json.load(response)["outputs"]), net.transform("numpy", x))
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.strip().endswith("stopped"), out + err


def test_serve_reports_a_taken_port_and_a_missing_checkpoint(checkpoint, tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run([sys.executable, "-m", "juicepy", "serve", str(checkpoint[0]), "--port", str(port)],
                             capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in run.stderr
    run = subprocess.run([sys.executable, "-m", "juicepy", "serve", str(tmp_path / "none.safetensors")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "no such checkpoint file" in run.stderr


def test_serve_help_explains_every_flag():
    from juicepy.cli import build_parser

    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    for action in serve._actions:
        if action.dest != "help":
            assert action.help, f"--{action.dest} has no help text"
    text = serve.format_help()
    for flag in ("--backend", "--host", "--port", "--watch", "--max-batch", "--batch-wait-ms", "--max-body-bytes",
                 "--max-connections", "--no-finite-check"):
        assert flag in text
