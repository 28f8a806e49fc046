"""Build assets/fonts/NotoSansCJKsc-belle.otf: a subset of Noto Sans CJK SC (OFL-1.1) small enough to
ship, so Chinese renders offline in the Flutter web client (which has no CJK font of its own).

Characters kept: ASCII and Latin-1, general punctuation, CJK symbols and full-width forms, every
GB2312 character (6,763 common simplified hanzi) and Big5 level 1 (5,401 common traditional hanzi).
Source: Debian's fonts-noto-cjk, /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc.

    python assets/fonts/make_subset.py
"""

import sys
from pathlib import Path

from fontTools import subset
from fontTools.ttLib import TTCollection

SOURCE = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")
OUT = Path(__file__).with_name("NotoSansCJKsc-belle.otf")
FAMILY = "Noto Sans CJK SC"


def charset() -> set[int]:
    chars = set(range(0x20, 0x7F)) | set(range(0xA0, 0x100))
    chars |= set(range(0x2000, 0x2070)) | set(range(0x3000, 0x3040)) | set(range(0xFF00, 0xFFF0))
    chars |= {0x2190, 0x2191, 0x2192, 0x2193, 0x2026, 0x00B7, 0x2022, 0x25CF, 0x25CB, 0x2713, 0x2715}
    for hi in range(0xA1, 0xF8):  # GB2312 rows
        for lo in range(0xA1, 0xFF):
            try:
                chars.add(ord(bytes([hi, lo]).decode("gb2312")))
            except UnicodeDecodeError:
                pass
    for hi in range(0xA4, 0xC7):  # Big5 level 1: 0xA440-0xC67E
        for lo in list(range(0x40, 0x7F)) + list(range(0xA1, 0xFF)):
            try:
                chars.add(ord(bytes([hi, lo]).decode("big5")))
            except UnicodeDecodeError:
                pass
    return chars


def main() -> int:
    collection = TTCollection(str(SOURCE))
    font = next(f for f in collection.fonts if f["name"].getDebugName(1) == FAMILY)
    options = subset.Options()
    options.hinting = False  # Flutter renders without hints; they are ~15% of the file
    options.layout_features = ["kern", "palt"]  # no vertical or locale forms: ~0.5 MB less
    options.name_IDs = [0, 1, 2, 3, 4, 5, 6, 13, 14]  # keep the copyright and OFL notice
    options.notdef_outline = True
    sub = subset.Subsetter(options)
    sub.populate(unicodes=charset())
    sub.subset(font)
    font.save(str(OUT))
    print(f"{OUT}: {OUT.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
