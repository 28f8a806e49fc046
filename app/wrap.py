"""Word wrapping for text that arrives a few characters at a time (a streamed reply in a terminal).

Terminals wrap at the last column, in the middle of a word. Here a word that would cross the edge
moves to the next line as a whole. Chinese and Japanese text has no spaces: every wide character
may start a new line, and counts two columns.
"""

import unicodedata
from collections.abc import Callable


def char_width(ch: str) -> int:
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def text_width(text: str) -> int:
    return sum(char_width(ch) for ch in text)


class StreamWrap:
    """Feed pieces with `write`; `flush` at the end. Output goes to `out` (e.g. print without a
    newline). A word is held back until the character after it shows where it ends."""

    def __init__(self, width: int, out: Callable[[str], None]):
        self.width = max(width, 10)
        self.out = out
        self.column = 0
        self.word = ""  # the word being received, not yet written
        self.spaces = ""  # spaces after the last written word, written only if the next word fits

    def write(self, text: str) -> None:
        for ch in text:
            if ch == "\n":
                self._end_word()
                self.out("\n")
                self.column, self.spaces = 0, ""
            elif ch in " \t":
                self._end_word()
                self.spaces += ch
            elif char_width(ch) == 2:
                self._end_word()  # a wide character is a word of its own
                self.word = ch
                self._end_word()
            else:
                self.word += ch

    def flush(self) -> None:
        self._end_word()
        if self.spaces and self.column + len(self.spaces) <= self.width:
            self.out(self.spaces)
            self.column += len(self.spaces)
        self.spaces = ""

    def _end_word(self) -> None:
        if not self.word:
            return
        word, self.word = self.word, ""
        need = text_width(word)
        if self.column and self.column + len(self.spaces) + need > self.width:
            self.out("\n")
            self.column, self.spaces = 0, ""
        if self.spaces:
            self.out(self.spaces)
            self.column += len(self.spaces)
            self.spaces = ""
        # a word longer than the line still has to be cut somewhere
        while self.column + need > self.width and self.column == 0 and len(word) > 1:
            cut, used = 0, 0
            while cut < len(word) and used + char_width(word[cut]) <= self.width:
                used += char_width(word[cut])
                cut += 1
            self.out(word[:cut] + "\n")
            word, need = word[cut:], text_width(word[cut:])
        self.out(word)
        self.column += need


def wrap_text(text: str, width: int) -> str:
    parts: list[str] = []
    w = StreamWrap(width, parts.append)
    w.write(text)
    w.flush()
    return "".join(parts)
