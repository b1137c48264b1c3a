"""--watch: swap in the checkpoint whenever its file is replaced.

jp.save writes a temporary file and renames it over the checkpoint, so the path always names
a complete file: polling its (inode, mtime, size) and loading on any change is safe, and needs
no file-system notification library. A checkpoint that cannot be read or is refused is
reported and skipped until the file changes again; the old network keeps serving.
"""

from __future__ import annotations

import logging
import os
import threading

from .. import arguments

log = logging.getLogger("juicepy.serve")


def file_signature(path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:  # missing, or unreachable for now (a directory's permissions): nothing to load
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class CheckpointWatcher:
    """Polls ``path`` every ``interval_s`` and calls ``swap(path)`` when the file changed."""

    def __init__(self, path, swap, interval_s: float = 1.0):
        self.interval_s = arguments.number("CheckpointWatcher", "interval_s", interval_s, low=0, low_open=True)
        self.path, self._swap = os.fspath(path), swap
        self._seen = file_signature(self.path)  # the file the server started with
        self._stop = threading.Event()
        self.failures = 0
        self._thread = threading.Thread(target=self._loop, name="juicepy-watcher", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def poll(self) -> bool:
        """Swap if the file changed since the last look; True when a swap happened."""
        signature = file_signature(self.path)
        if signature is None or signature == self._seen:
            return False
        # remembered before loading: a file replaced again while it loads is seen next time
        self._seen = signature
        try:
            info = self._swap(self.path)
        except Exception as err:  # a bad checkpoint must not stop the watcher or the server
            self.failures += 1
            log.warning("watch: kept the served network, %s", err)
            return False
        log.info("watch: now serving %s (step %d)", self.path, info.step)
        return True

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
