"""Background health checker: finds dead FUSE clients and stale binds, and repairs them.

Runs `NodeManager.repair_all` every `interval` seconds, and at once when `kick()`ed (a
NodeGetVolumeStats that saw an abnormal volume does that).
"""

from __future__ import annotations

import logging
import threading

from .manager import NodeManager

log = logging.getLogger(__name__)


class HealthChecker:
    def __init__(self, manager: NodeManager, interval: float) -> None:
        self.manager = manager
        self.interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fuse-health", daemon=True)
        self._thread.start()

    def kick(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval if self.interval > 0 else None)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.manager.repair_all()
            except Exception:
                log.exception("health check failed")
