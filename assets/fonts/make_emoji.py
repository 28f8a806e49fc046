"""Build assets/fonts/NotoColorEmoji-belle.ttf: the single-character emoji of Noto Color Emoji
(OFL-1.1), so emoji render offline in the Flutter web client (its own emoji fallback downloads a
font from the internet; without it emoji are boxes).

Kept: every emoji that is one code point (faces, hands, hearts, animals, food, objects, symbols,
✅ ❤ ☀ and the like), about 1,460 glyphs, 3 MB. Left out, to keep the file small: skin tones,
flags and ZWJ sequences (family, profession); those show as their parts or as boxes.
The glyphs are colour bitmaps (CBDT/CBLC), which CanvasKit draws; checked in Chromium.
Source: Debian's fonts-noto-color-emoji, /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf.

    apt-get install fonts-noto-color-emoji && python assets/fonts/make_emoji.py
"""

import sys
from pathlib import Path

from fontTools import subset
from fontTools.ttLib import TTFont

SOURCE = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
OUT = Path(__file__).with_name("NotoColorEmoji-belle.ttf")


def is_emoji(cp: int) -> bool:
    # the font also maps digits, # and * (keycap bases) and a few letters: leave those to the text font
    return (cp >= 0x1F000 or 0x2190 <= cp < 0x2200 or 0x2300 <= cp < 0x2400 or 0x2600 <= cp < 0x27C0
            or 0x2B00 <= cp < 0x2C00 or cp in (0x00A9, 0x00AE, 0x203C, 0x2049, 0x2122, 0x2139, 0x24C2, 0x3030,
                                               0x303D, 0x3297, 0x3299))


def main() -> int:
    font = TTFont(str(SOURCE))
    chars = {cp for cp in font.getBestCmap() if is_emoji(cp)}
    options = subset.Options()
    options.layout_features = []  # no sequences (skin tones, flags, ZWJ): most of the source's size
    options.name_IDs = [0, 1, 2, 3, 4, 5, 6, 13, 14]  # keep the copyright and OFL notice
    sub = subset.Subsetter(options)
    sub.populate(unicodes=chars)
    sub.subset(font)
    font.save(str(OUT))
    print(f"{OUT}: {len(chars)} emoji, {OUT.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
