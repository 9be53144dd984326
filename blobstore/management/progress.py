"""A one-line progress bar for long transfers, drawn only on a terminal."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self, TextIO

MIB = 1024 * 1024
BAR_WIDTH = 20


class Progress:
    """Show bytes done (of total, when known), percent, MiB/s and time left on one line.

    Nothing is drawn unless ``enabled`` (by default: when ``stream`` is a
    terminal), nor before ``delay`` seconds have passed, so that short
    transfers and piped runs stay quiet. The line is redrawn at most every
    ``interval`` seconds; leaving the ``with`` block draws it a last time and
    ends it.
    """

    def __init__(
        self,
        stream: TextIO,
        total: int | None = None,
        label: str = "",
        *,
        enabled: bool | None = None,
        delay: float = 0.5,
        interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.total = total
        self.label = label
        self.enabled = _is_terminal(stream) if enabled is None else enabled
        self.delay = delay
        self.interval = interval
        self.clock = clock
        self.done = 0
        self.started = clock()
        self.drawn_at: float | None = None
        self.width = 0

    def advance(self, count: int) -> None:
        """Count count more bytes done, and redraw if it is time to."""
        self.done += count
        if not self.enabled:
            return
        now = self.clock()
        if now - self.started < self.delay:
            return
        if self.drawn_at is None or now - self.drawn_at >= self.interval:
            self.draw(now)

    def draw(self, now: float | None = None) -> None:
        """Write the line, over the previous one."""
        now = self.clock() if now is None else now
        line = self.line(now)
        padding = " " * max(0, self.width - len(line))
        self.stream.write(f"\r{line}{padding}")
        self.stream.flush()
        self.width = len(line)
        self.drawn_at = now

    def line(self, now: float) -> str:
        """Return the text of the line at time now."""
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / MIB / elapsed
        parts = [self.label] if self.label else []
        if self.total:
            fraction = min(self.done / self.total, 1.0)
            filled = round(fraction * BAR_WIDTH)
            parts.append(f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction:4.0%}")
            parts.append(f"{self.done / MIB:,.1f}/{self.total / MIB:,.1f} MiB")
        else:
            parts.append(f"{self.done / MIB:,.1f} MiB")
        parts.append(f"{rate:,.1f} MiB/s")
        if self.total and rate > 0 and self.done < self.total:
            left = (self.total - self.done) / MIB / rate
            parts.append(f"{int(left) // 60}:{int(left) % 60:02d} left")
        line = "  ".join(parts)
        columns = shutil.get_terminal_size((80, 24)).columns - 1
        return line if len(line) <= columns else line[: max(columns - 1, 0)] + "…"

    def finish(self) -> None:
        """Draw the final figures and end the line, if a line was drawn."""
        if self.drawn_at is not None:
            self.draw()
            self.stream.write("\n")
            self.stream.flush()
            self.drawn_at = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.finish()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False
