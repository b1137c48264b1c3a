"""CheckpointWatcher: a replaced file is swapped in once; a bad one is skipped, not fatal."""

import pytest

import juicepy as jp
from juicepy.serve.watcher import CheckpointWatcher


class Swaps:
    def __init__(self, fail=False):
        self.paths, self.fail = [], fail

    def __call__(self, path):
        if self.fail:
            raise ValueError("refused")
        self.paths.append(path)
        return jp.load(path)


def test_a_replaced_file_is_swapped_in_once(tmp_path, make_net):
    path = tmp_path / "ck.safetensors"
    jp.save(path, make_net(0))
    swaps = Swaps()
    watcher = CheckpointWatcher(path, swaps, interval_s=3600)  # polled by hand below
    try:
        assert not watcher.poll()  # the file the server started with
        jp.save(path, make_net(1))
        assert watcher.poll() and swaps.paths == [str(path)]
        assert not watcher.poll()  # unchanged since
    finally:
        watcher.close()


def test_a_failing_swap_is_counted_and_skipped_until_the_file_changes(tmp_path, make_net, caplog):
    path = tmp_path / "ck.safetensors"
    jp.save(path, make_net(0))
    watcher = CheckpointWatcher(path, Swaps(fail=True), interval_s=3600)
    try:
        jp.save(path, make_net(1))
        assert not watcher.poll() and watcher.failures == 1
        assert "kept the served network, refused" in caplog.text
        assert not watcher.poll() and watcher.failures == 1
        path.unlink()  # a missing file is waited for, not an error
        assert not watcher.poll() and watcher.failures == 1
    finally:
        watcher.close()


def test_a_path_that_cannot_be_looked_at_is_waited_for_and_the_watcher_lives_on(tmp_path, make_net):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    path = blocker / "ck.safetensors"  # stat raises NotADirectoryError, not FileNotFoundError
    swaps = Swaps()
    watcher = CheckpointWatcher(path, swaps, interval_s=0.01)
    try:
        assert not watcher.poll() and watcher.failures == 0
        watcher._stop.wait(0.1)  # the polling thread has met the path some ten times
        assert watcher._thread.is_alive()
        blocker.unlink()
        blocker.mkdir()
        jp.save(path, make_net(1))
        for _ in range(500):  # the polling thread swaps it in
            if swaps.paths:
                break
            watcher._stop.wait(0.01)
        assert swaps.paths == [str(path)] and watcher.failures == 0
    finally:
        watcher.close()


def test_interval_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="interval_s must be a finite number > 0"):
        CheckpointWatcher(tmp_path / "x", Swaps(), interval_s=0)
