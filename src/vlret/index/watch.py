"""A watched folder: an index that follows a folder of photos or videos as files arrive, change or leave.

File-system events come from ``watchfiles`` (inotify, FSEvents, ...; ``poll=True`` polls instead, for
network shares that send no events). Events are batched: ``watchfiles`` gathers them until the folder
has been quiet for a moment, and each batch becomes one update (:func:`vlret.index.build.build_index`),
so a copy of 10,000 photos is a few updates, not 10,000. A file modified less than ``settle`` seconds
ago is taken for a copy still being written and left for a later update, which the watcher runs once it
has settled, events or not. A file that vanishes between the event and the read is dropped, not an
error. Each update publishes a new version atomically, so a search never sees a half-applied one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from threading import Event

from vlret.data.video import VIDEO_SUFFIXES
from vlret.errors import VlretError
from vlret.index.build import IMAGE_SUFFIXES, build_index

#: seconds a file must have been left alone before it is read (a copy still being written is not)
DEFAULT_SETTLE_SECONDS = 2.0


def _unsettled(folder: Path, suffixes: set[str], settle: float) -> bool:
    """Whether a media file under ``folder`` was modified less than ``settle`` seconds ago."""
    now = time.time()
    for path in folder.rglob("*"):
        if path.suffix.lower() in suffixes:
            try:
                if now - path.stat().st_mtime < settle:
                    return True
            except OSError:  # gone meanwhile
                continue
    return False


def watch_folder(
    folder: str | Path,
    index: str | Path,
    model_name: str,
    videos: bool = False,
    settle: float = DEFAULT_SETTLE_SECONDS,
    poll: bool = False,
    stop: Event | None = None,
    max_updates: int | None = None,
    report: Callable[[str], None] | None = None,
    **build_options,
) -> int:
    """Keep the index at ``index`` up to date with ``folder`` until ``stop`` is set (or ``max_updates``
    updates were published); returns the number published. ``build_options`` go to every build
    (``on_error``, ``memory_budget_bytes``, ...). An update that fails (a refused mass removal, say) is
    reported and the watch goes on."""
    import watchfiles

    folder = Path(folder)
    suffixes = set(VIDEO_SUFFIXES if videos else IMAGE_SUFFIXES)
    report = report or (lambda line: print(line, file=sys.stderr, flush=True))
    stop = stop or Event()
    source = {"videos" if videos else "images": folder}
    published = 0
    version = _version(index)
    pending = False  # files left unsettled by the last update: another one is due when they settle

    def update() -> None:
        nonlocal published, version, pending
        try:
            build_index(model_name, index, settle_seconds=settle, progress=False, **source, **build_options)
        except VlretError as exc:
            report(f"update of {index} failed: {exc}; still watching")
        now = _version(index)
        if now != version:
            published += 1
            version = now
            report(f"{time.strftime('%H:%M:%S')} {index}: version {now} published")
        pending = _unsettled(folder, suffixes, settle)

    update()
    wait_ms = max(100, int(settle * 1000))
    if max_updates is not None and published >= max_updates:
        return published
    for changes in watchfiles.watch(
        folder,
        stop_event=stop,
        force_polling=poll or None,
        poll_delay_ms=wait_ms if poll else 300,
        rust_timeout=wait_ms,
        yield_on_timeout=True,
        raise_interrupt=False,
    ):
        relevant = any(Path(name).suffix.lower() in suffixes for _, name in changes)
        if relevant or pending:
            if relevant:
                time.sleep(settle)  # let the copy that raised the events settle before listing
            update()
            if max_updates is not None and published >= max_updates:
                break
    return published


def _version(index: str | Path) -> str | None:
    """The version folder the index links to now (None: no index yet)."""
    link = Path(index)
    return link.resolve().name if (link / "index.json").is_file() else None
