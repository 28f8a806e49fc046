"""Build assets/fonts/NotoSansMono-belle.ttf: a subset of Noto Sans Mono (OFL-1.1) for code
blocks. The Flutter web client has no monospace font offline ("monospace" fell back to the
proportional text font, so code lost its alignment).

Kept: Latin (ASCII, Latin-1, Latin Extended-A), Greek, Cyrillic, general punctuation, arrows,
maths operators, box drawing and block elements. CJK in code falls back to the CJK font.
Source: Debian's fonts-noto-mono, /usr/share/fonts/truetype/noto/NotoSansMono-Regular.ttf.

    apt-get install fonts-noto-mono && python assets/fonts/make_mono.py
"""

import sys
from pathlib import Path

from fontTools import subset
from fontTools.ttLib import TTFont

SOURCE = Path("/usr/share/fonts/truetype/noto/NotoSansMono-Regular.ttf")
OUT = Path(__file__).with_name("NotoSansMono-belle.ttf")
RANGES = [(0x20, 0x7F), (0xA0, 0x180), (0x370, 0x400), (0x400, 0x460), (0x2000, 0x2070), (0x20A0, 0x20C0),
          (0x2190, 0x2200), (0x2200, 0x2300), (0x2500, 0x25A0)]


def main() -> int:
    font = TTFont(str(SOURCE))
    chars = {cp for lo, hi in RANGES for cp in range(lo, hi)}
    options = subset.Options()
    options.hinting = False  # Flutter renders without hints
    options.layout_features = ["kern"]
    options.name_IDs = [0, 1, 2, 3, 4, 5, 6, 13, 14]  # keep the copyright and OFL notice
    options.notdef_outline = True
    sub = subset.Subsetter(options)
    sub.populate(unicodes=chars)
    sub.subset(font)
    font.save(str(OUT))
    print(f"{OUT}: {OUT.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
