"""A server follows its index link to newer versions without dropping a request.

``vlret index build`` publishes a version by replacing the link ``INDEX`` (see :mod:`vlret.index.build`).
Each replica checks the link at most every ``check_every`` seconds as requests arrive (or at once, on
``POST /api/reload``); a new target is opened on a thread of its own, model included, while the current
version keeps answering, and is swapped in when it is ready. A request takes the current version once, at
its start, and uses it to the end (a snapshot), so the hits it returns name items of the version that found
them. The version before is kept, so that thumbnails and media of results shown just before a swap still
resolve: each result's links name their version.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger("vlret.serve")

#: seconds between two looks at the index link (one ``stat`` of a symbolic link)
CHECK_EVERY = 2.0

Version = TypeVar("Version")


class VersionFollower(Generic[Version]):
    """The version of ``link`` being served, opened by ``open_version(folder)``; ``name_of(version)`` is the
    name results carry (the version folder's name)."""

    def __init__(
        self,
        link: str | Path,
        open_version: Callable[[Path], Version],
        name_of: Callable[[Version], str],
        check_every: float = CHECK_EVERY,
    ):
        self.link = Path(link)
        self.open_version, self.name_of, self.check_every = open_version, name_of, check_every
        self.current: Version = open_version(self.link.resolve())
        self.previous: Version | None = None
        self.last_error: str | None = None  # why the newest version could not be opened, if it could not
        self._failed: str | None = None  # that version's name: not tried again until the link moves on
        self._lock = threading.Lock()
        self._loading: threading.Thread | None = None
        self._checked = time.monotonic()
        self.reload_stamp = self.link.with_name(f".{self.link.name}.reload")
        self._stamp = self._stamp_time()
        self._named: Version | None = None  # a version opened by name from disk (one at a time)
        self._named_lock = threading.Lock()

    def snapshot(self) -> Version:
        """The version a request should use; starts opening a newer one when the link has moved (looked
        at every ``check_every`` seconds, and at once when any replica was asked to reload)."""
        now = time.monotonic()
        stamp = self._stamp_time()
        if now - self._checked >= self.check_every or stamp != self._stamp:
            self._checked, self._stamp = now, stamp
            self._start_loading_if_moved()
        return self.current

    def find(self, name: str | None) -> Version | None:
        """The current version (``name`` None or its name), the one before it, or another version still
        on disk beside them (one that a sibling replica served: every replica resolves every link a
        replica gave out); None when there is no such version."""
        if name is None or name == self.name_of(self.current):
            return self.current
        if self.previous is not None and name == self.name_of(self.previous):
            return self.previous
        return self._open_by_name(name)

    def _open_by_name(self, name: str) -> Version | None:
        versions = self.link.resolve().parent
        folder = versions / name
        if "/" in name or name.startswith(".") or not (folder / "index.json").is_file():
            return None  # only a version folder beside the served one: never a path elsewhere
        with self._named_lock:
            if self._named is None or self.name_of(self._named) != name:
                try:
                    self._named = self.open_version(folder)
                except Exception as exc:  # noqa: BLE001 - a version that cannot be opened is not served
                    log.warning("index version %s could not be opened by name: %s", name, exc)
                    return None
            return self._named

    def _stamp_time(self) -> int | None:
        try:
            return self.reload_stamp.stat().st_mtime_ns
        except OSError:
            return None

    def reload(self) -> Version:
        """Open the link's version now, if it moved, and wait for it; returns the version served. The
        other replicas are told through the reload stamp beside the link, and look at their next request."""
        try:
            self.reload_stamp.touch()
            self._stamp = self._stamp_time()
        except OSError as exc:  # a read-only collection: the others follow within check_every
            log.info(
                "could not touch %s (%s); other replicas follow the link on their own", self.reload_stamp, exc
            )
        self._start_loading_if_moved()
        loading = self._loading
        if loading is not None:
            loading.join()
        return self.current

    def _target(self) -> Path | None:
        try:
            return self.link.resolve(strict=True)
        except OSError:  # between a rebuild's steps, or removed: keep serving what is open
            return None

    def _start_loading_if_moved(self) -> None:
        target = self._target()
        if target is None or target.name in (self.name_of(self.current), self._failed):
            return
        with self._lock:
            if self._loading is not None and self._loading.is_alive():
                return
            self._loading = threading.Thread(
                target=self._load, args=(target,), name="vlret-index-version", daemon=True
            )
            self._loading.start()

    def _load(self, folder: Path) -> None:
        try:
            version = self.open_version(folder)
        except Exception as exc:  # noqa: BLE001 - a bad new version must not stop the one being served
            self.last_error, self._failed = f"{folder.name}: {exc}", folder.name
            log.warning("index version %s could not be opened; still serving %s: %s", folder.name,
                        self.name_of(self.current), exc)  # fmt: skip
            return
        self.previous, self.current = self.current, version
        self.last_error = None
        log.info("now serving index version %s", folder.name)
