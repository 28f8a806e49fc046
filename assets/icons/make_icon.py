"""Draw assets/icons/icon.png (512x512): a white speech bubble on a teal rounded square.
Plain zlib + struct PNG writer, so no imaging library is needed.

    python assets/icons/make_icon.py
"""

import struct
import zlib
from pathlib import Path

SIZE = 512
OUT = Path(__file__).with_name("icon.png")


def inside_rounded(x: float, y: float, x0: float, y0: float, x1: float, y1: float, r: float) -> bool:
    cx, cy = min(max(x, x0 + r), x1 - r), min(max(y, y0 + r), y1 - r)
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r and x0 <= x <= x1 and y0 <= y <= y1


def pixel(x: int, y: int) -> tuple[int, int, int, int]:
    if not inside_rounded(x, y, 0, 0, SIZE - 1, SIZE - 1, 96):
        return (0, 0, 0, 0)
    t = y / SIZE  # vertical gradient teal -> deep blue
    bg = (int(0 + 20 * t), int(150 - 60 * t), int(136 + 40 * t), 255)
    bubble = inside_rounded(x, y, 96, 120, 416, 352, 64)
    tail = 150 <= x <= 230 and 340 <= y <= 420 and (x - 150) >= (y - 340) * 0.9
    if bubble or tail:
        dot = any((x - cx) ** 2 + (y - 236) ** 2 <= 22 ** 2 for cx in (186, 256, 326))
        return bg if dot else (255, 255, 255, 255)
    return bg


def write_png(path: Path) -> None:
    raw = b"".join(b"\x00" + b"".join(struct.pack("4B", *pixel(x, y)) for x in range(SIZE)) for y in range(SIZE))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", SIZE, SIZE, 8, 6, 0, 0, 0)  # 8-bit RGBA
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
                     + chunk(b"IEND", b""))


if __name__ == "__main__":
    write_png(OUT)
    print(f"{OUT}: {OUT.stat().st_size:,} bytes")
