"""Progress of a prediction run: items (images, video frames) done, the tiles of the current image, time left.

On a terminal: tqdm bars (the items; below them the tiles of a tiled image), with log lines printed above the bars.
Elsewhere (output to a file, CI logs): no carriage-return bars but one log line at most every ``log_every_s``
seconds, and one at the end: ``predict: 3/70 images, MOS159.png tile 40/120, 4.1 s/image, ETA 4m36s``.
"""
from __future__ import annotations

import logging
import sys
import time
from contextlib import ExitStack
from typing import List, Optional, TextIO

__all__ = ["Progress", "format_seconds"]

logger = logging.getLogger("sarl.predict")


def format_seconds(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3725`` -> ``1h02m05s``."""
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """Progress over ``total`` items of ``unit`` (None: unknown count, no ETA).

    Use as a context manager; call :meth:`start` before each item, :meth:`tiles` (a ``TileProgress``) as its tiles
    are run, :meth:`advance` after it. ``interactive``: tqdm bars (default: when ``stream`` is a terminal).
    ``log_loggers``: loggers whose console output goes above the bars while they are shown.
    """

    def __init__(self, total: Optional[int], unit: str = "image", desc: str = "predict",
                 interactive: Optional[bool] = None, log_every_s: float = 10.0, stream: Optional[TextIO] = None,
                 log_loggers: Optional[List[str]] = None):
        self.total = total if total and total > 0 else None
        self.unit = unit
        self.desc = desc
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.log_every_s = float(log_every_s)
        self.log_loggers = log_loggers or ["sarl", "detectron2"]
        self.done = 0
        self.name = ""
        self.tiles_done = self.tiles_total = 0
        self._start = self._last_log = 0.0
        self._bar = self._tile_bar = None
        self._stack = ExitStack()

    def __enter__(self) -> "Progress":
        self._start = self._last_log = time.monotonic()
        if self.interactive:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._stack.enter_context(logging_redirect_tqdm([logging.getLogger(n) for n in self.log_loggers]))
            self._bar = tqdm(total=self.total, unit=self.unit, desc=self.desc, file=self.stream, dynamic_ncols=True)
        return self

    def __exit__(self, *exc) -> None:
        self._close_tile_bar()
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.done:
            self._log(final=True)
        self._stack.close()

    def start(self, name: str) -> None:
        """Item ``name`` begins (its tiles, if any, come through :meth:`tiles`)."""
        self.name = name
        self.tiles_done = self.tiles_total = 0
        if self._bar is not None:
            self._bar.set_postfix_str(name, refresh=False)

    def tiles(self, done: int, total: int) -> None:
        """``done`` of the current item's ``total`` tiles are run."""
        self.tiles_done, self.tiles_total = done, total
        if self._bar is not None:
            if self._tile_bar is None:
                from tqdm import tqdm

                self._tile_bar = tqdm(total=total, unit="tile", desc="  tiles", file=self.stream, leave=False,
                                      position=1, dynamic_ncols=True)
            self._tile_bar.update(done - self._tile_bar.n)
        else:
            self._maybe_log()

    def advance(self) -> None:
        """The current item is done."""
        self.done += 1
        self.tiles_done = self.tiles_total = 0
        self._close_tile_bar()
        if self._bar is not None:
            self._bar.update(1)
        elif self.total is None or self.done < self.total:  # the last one is logged on exit, with the total time
            self._maybe_log()

    def _close_tile_bar(self) -> None:
        if self._tile_bar is not None:
            self._tile_bar.close()
            self._tile_bar = None

    def _maybe_log(self) -> None:
        if time.monotonic() - self._last_log >= self.log_every_s:
            self._log()

    def eta_seconds(self) -> Optional[float]:
        """Seconds left, from the time spent so far per item (tiles count as fractions of their item)."""
        if self.total is None:
            return None
        fraction = (self.done + (self.tiles_done / self.tiles_total if self.tiles_total else 0.0)) / self.total
        if fraction <= 0:
            return None
        return (time.monotonic() - self._start) * (1.0 - fraction) / fraction

    def _log(self, final: bool = False) -> None:
        self._last_log = time.monotonic()
        elapsed = self._last_log - self._start
        parts = [f"{self.desc}: {self.done}/{self.total if self.total else '?'} {self.unit}s"]
        if self.tiles_total and not final:
            parts.append(f"{self.name} tile {self.tiles_done}/{self.tiles_total}")
        if self.done:
            parts.append(f"{elapsed / self.done:.2f} s/{self.unit}")
        eta = self.eta_seconds()
        parts.append(f"done in {format_seconds(elapsed)}" if final else
                     f"ETA {format_seconds(eta)}" if eta is not None else f"{format_seconds(elapsed)} elapsed")
        logger.info(", ".join(parts))
