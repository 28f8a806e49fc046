"""Hub downloads from the model panel, without Flet: one download per server at a time (shared with
the first-start fetch), and the progress line's numbers (bytes, speed over the last seconds, time
left)."""

import threading
import time
from collections import deque
from dataclasses import dataclass, field

# One download per server, however many tabs are open: the first start's fetch of the default
# model and the model panel take it too. Two pulls at once would halve each one's speed and, for
# the same file, write into the same .part.
lock = threading.Lock()

SPEED_WINDOW_S = 3.0  # the speed shown is over the last few seconds: a stall shows within them
UPDATES_PER_S = 4.0  # progress lines sent to the browser: each update repaints the page


def short_bytes(n: float) -> str:
    """Whole megabytes below a gigabyte ("312 MB"): the line changes several times a second, and
    decimals of a megabyte only flicker."""
    if n >= 1e9:
        return f"{n / 1e9:.2f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.0f} MB"
    return f"{n / 1e3:.0f} KB"


def short_rate(bytes_per_s: float) -> str:
    return f"{bytes_per_s / 1e6:.1f} MB/s" if bytes_per_s >= 1e6 else f"{bytes_per_s / 1e3:.0f} KB/s"


def clock(seconds: float) -> str:
    """0:43, 12:05, 1:02:09."""
    s = max(0, round(seconds))
    h, m, s = s // 3600, s // 60 % 60, s % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def percent(done: int, total: int) -> int:
    """Rounded down: a download 99.6% done must not say 100%."""
    return int(done * 100 // total) if total else 0


@dataclass
class Meter:
    """Bytes over time for one download. Only bytes fetched in this attempt count for the speed:
    a resumed download starts at its partial size, which took no time now."""
    samples: deque = field(default_factory=deque)  # (monotonic time, bytes done)
    last_shown: float = 0.0

    def add(self, done: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[1][0] >= SPEED_WINDOW_S:
            self.samples.popleft()

    def rate(self) -> float | None:
        """Bytes per second over the window; None until there are two samples far enough apart."""
        if len(self.samples) < 2:
            return None
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 - t0 >= 0.2 else None

    def due(self, now: float | None = None) -> bool:
        """Whether it is time for the next line on screen (a few a second, not one per 64 KiB)."""
        now = time.monotonic() if now is None else now
        if now - self.last_shown < 1 / UPDATES_PER_S:
            return False
        self.last_shown = now
        return True


def progress_text(t, done: int, total: int, rate: float | None) -> str:
    """'312 MB of 491 MB · 4.2 MB/s · 0:43 left' in the UI's language; the speed and time left
    come once there is a speed to tell."""
    text = t("download_of", done=short_bytes(done), total=short_bytes(total))
    if rate:
        text += " · " + short_rate(rate)
        if total > done:
            text += " · " + t("time_left", time=clock((total - done) / rate))
    return text
