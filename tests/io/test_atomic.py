"""Atomic saves (juicepy/io/atomic.py): stale temporaries of a killed save are cleaned, file
modes follow the umask or the file being replaced, and symlinks are written through."""

import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.io import atomic


def _net(seed=0):
    return jp.Network(L.Sequential(L.Linear(4), L.ReLU(), L.Linear(2)), (3,), seed=seed)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _temp_name(target: str, pid: int, host: str | None = None, tag: str = "deadbeef") -> str:
    return f".{target}.{host or socket.gethostname()}.{pid}.{tag}.tmp"


def test_stale_temporaries_of_the_same_target_are_removed_and_nothing_else(tmp_path):
    dead = _dead_pid()
    stale = [tmp_path / _temp_name("ck.safetensors", dead, tag=t) for t in ("aaaa1111", "bbbb2222")]
    kept = [tmp_path / _temp_name("ck.safetensors", os.getpid()),          # a save in flight here
            tmp_path / _temp_name("other.safetensors", dead),              # another target's
            tmp_path / _temp_name("ck.safetensors", dead, host="elsewhere.example"),  # another host's
            tmp_path / ".ck.safetensors.notours.tmp", tmp_path / "ck.safetensors.bak"]
    for p in stale + kept:
        p.write_bytes(b"x" * 100)
    jp.save(tmp_path / "ck.safetensors", _net())
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)
    assert jp.load(tmp_path / "ck.safetensors").network.get_weights()["0.weight"].shape == (4, 3)


def test_a_save_killed_mid_write_leaks_nothing_after_the_next_save(tmp_path):
    target = tmp_path / "ck.safetensors"
    script = textwrap.dedent(f"""
        import sys, time
        import juicepy as jp
        from juicepy import layers as L
        from juicepy.io import checkpoint

        def write_half_and_hang(f, payload):
            f.write(payload[:len(payload) // 2])
            f.flush()
            print("writing", flush=True)
            time.sleep(60)

        checkpoint._write = write_half_and_hang
        jp.save({str(target)!r}, jp.Network(L.Linear(256), (256,)))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        leaked = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert len(leaked) == 1 and leaked[0].stat().st_size > 100_000
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    jp.save(target, _net())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.safetensors"]


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_checkpoints_honour_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    jp.save(tmp_path / "ck.safetensors", _net())
    jp.io.save_weights(tmp_path / "w.safetensors", _net())
    jp.io.save_definition(tmp_path / "net.json", _net())
    for name in ("ck.safetensors", "w.safetensors", "net.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_resaving_keeps_the_mode_of_the_existing_file(tmp_path, umask):
    umask(0o077)
    path = tmp_path / "ck.safetensors"
    jp.save(path, _net())
    for mode in (0o644, 0o640, 0o604):
        path.chmod(mode)
        jp.save(path, _net(seed=1))
        assert stat.S_IMODE(path.stat().st_mode) == mode


def test_saving_through_a_symlink_updates_its_target(tmp_path):
    real_dir = tmp_path / "store"
    real_dir.mkdir()
    real = real_dir / "model.safetensors"
    jp.save(real, _net(seed=0))
    link = tmp_path / "latest.safetensors"
    link.symlink_to(os.path.relpath(real, tmp_path))
    chain = tmp_path / "chain.safetensors"
    chain.symlink_to(link.name)
    jp.save(chain, _net(seed=1))
    assert chain.is_symlink() and link.is_symlink() and not real.is_symlink()
    expected = _net(seed=1).get_weights()["0.weight"]
    np.testing.assert_array_equal(jp.load(real).network.get_weights()["0.weight"], expected)
    assert sorted(p.name for p in real_dir.iterdir()) == ["model.safetensors"]
    dangling = tmp_path / "dangling.safetensors"
    dangling.symlink_to("store/new.safetensors")
    jp.save(dangling, _net(seed=2))
    assert dangling.is_symlink() and (real_dir / "new.safetensors").is_file()


def test_temporary_names_parse_back(tmp_path):
    name = atomic.temporary_name("ck.safetensors")
    assert name.startswith(".ck.safetensors.") and name.endswith(".tmp")
    assert atomic.owner_of(name, "ck.safetensors") == (socket.gethostname(), os.getpid())
    assert atomic.owner_of(name, "c.safetensors") is None
