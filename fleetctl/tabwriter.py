"""Go's ``text/tabwriter``, as fleet's fleetctl used it, reimplemented as a pure function.

fleet printed every table through ``tabwriter.NewWriter(os.Stdout, 0, 8, 1, '\\t', 0)``:
minwidth 0, tabwidth 8, padding 1, padchar TAB, no flags. Users' scripts (``awk -F'\\t'``,
``cut -f``) and eyes depend on the exact bytes, so this follows the algorithm of the Go
package rather than approximating it:

- Text is split into lines at ``\\n`` and into cells at ``\\t``; a tab *terminates* a cell,
  so the text after a line's last tab is a trailing cell that is not part of any column.
- A column is formatted per *column block*: the run of consecutive lines that have a
  (tab-terminated) cell in that column. Its width is the widest cell in the block plus
  ``padding``, at least ``minwidth``.
- With TAB as the pad character the width is rounded up to a multiple of ``tabwidth`` and
  a cell is followed by as many tabs as it takes to reach it (at least one), so the output
  aligns in any terminal whose tab stops are every ``tabwidth`` columns.
- A line with a single cell (no tab at all) flushes everything before it: the lines after
  it start new column blocks.
- Cell widths count characters (Go counts runes), not bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def _padding(text_width: int, cell_width: int, tabwidth: int, padchar: str) -> str:
    if padchar == "\t":
        if tabwidth == 0:
            return ""  # tabs have no width: no padding possible (Go does the same)
        cell_width = (cell_width + tabwidth - 1) // tabwidth * tabwidth
        missing = cell_width - text_width
        return "\t" * ((missing + tabwidth - 1) // tabwidth)
    return padchar * (cell_width - text_width)


class _Formatter:
    def __init__(self, lines: list[list[str]], minwidth: int, tabwidth: int, padding: int, padchar: str) -> None:
        self.lines = lines
        self.minwidth = minwidth
        self.tabwidth = tabwidth
        self.padding = padding
        self.padchar = padchar
        self.widths: list[int] = []
        self.out: list[str] = []

    def write_lines(self, line0: int, line1: int) -> None:
        for index in range(line0, line1):
            line = self.lines[index]
            for column, cell in enumerate(line):
                self.out.append(cell)
                if column < len(self.widths):
                    self.out.append(_padding(len(cell), self.widths[column], self.tabwidth, self.padchar))
            if index + 1 != len(self.lines):
                self.out.append("\n")  # the last line is the unterminated one: no newline

    def format(self, line0: int, line1: int) -> None:
        column = len(self.widths)
        this = line0
        while this < line1:
            if column >= len(self.lines[this]) - 1:
                this += 1
                continue
            # this line has a cell in this column: print the lines before the block, then
            # find the block (consecutive lines with a cell here) and its width
            self.write_lines(line0, this)
            line0 = this
            width = self.minwidth
            while this < line1 and column < len(self.lines[this]) - 1:
                width = max(width, len(self.lines[this][column]) + self.padding)
                this += 1
            self.widths.append(width)
            self.format(line0, this)  # the columns to the right, within this block
            self.widths.pop()
            line0 = this
        self.write_lines(line0, line1)


def _flush(lines: list[list[str]], minwidth: int, tabwidth: int, padding: int, padchar: str) -> str:
    formatter = _Formatter(lines, minwidth, tabwidth, padding, padchar)
    formatter.format(0, len(lines))
    return "".join(formatter.out)


def tabwrite(text: str, minwidth: int = 0, tabwidth: int = 8, padding: int = 1, padchar: str = "\t") -> str:
    """Align ``text`` exactly as Go's ``tabwriter`` (with these parameters and no flags)
    would after ``Write(text)`` and ``Flush()``."""
    if len(padchar) != 1:
        raise ValueError("padchar must be a single character")
    segments = text.split("\n")
    out: list[str] = []
    block: list[list[str]] = []
    for segment in segments[:-1]:  # newline-terminated lines
        cells = segment.split("\t")
        block.append(cells)
        if len(cells) == 1:  # a line without tabs ends the column blocks above it
            out.append(_flush(block + [[]], minwidth, tabwidth, padding, padchar))
            block = []
    tail = segments[-1].split("\t")
    if tail[-1] == "":
        tail.pop()  # an empty trailing cell was never started
    out.append(_flush(block + [tail], minwidth, tabwidth, padding, padchar))
    return "".join(out)


def format_table(rows: Iterable[Sequence[str]]) -> str:
    """fleet's tables: each row's cells joined by TAB, one row per line (``Fprintln``),
    through the tabwriter."""
    return tabwrite("".join("\t".join(row) + "\n" for row in rows))


__all__ = ["format_table", "tabwrite"]
