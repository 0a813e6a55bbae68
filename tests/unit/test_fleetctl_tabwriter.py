"""fleetctl's tabwriter: Go's text/tabwriter as fleet used it (minwidth 0, tabwidth 8,
padding 1, padchar TAB), pinned byte for byte."""

from __future__ import annotations

import pytest

from fleetctl.tabwriter import format_table, tabwrite


def test_reference_examples() -> None:
    # fleet's list-machines, list-units and list-unit-files as a terminal shows them (tab
    # stops every 8 columns); docs/commands.md, "Table output"
    assert format_table([["MACHINE", "IP", "METADATA"], ["113f16a7...", "172.17.8.103", "az=us-west-1b"]]) == (
        "MACHINE\t\tIP\t\tMETADATA\n113f16a7...\t172.17.8.103\taz=us-west-1b\n"
    )
    table = format_table(
        [["UNIT", "MACHINE", "ACTIVE", "SUB"], ["hello.service", "113f16a7.../172.17.8.103", "active", "running"]]
    )
    assert table == "UNIT\t\tMACHINE\t\t\t\tACTIVE\tSUB\nhello.service\t113f16a7.../172.17.8.103\tactive\trunning\n"
    assert table.expandtabs(8).splitlines() == [
        "UNIT            MACHINE                         ACTIVE  SUB",
        "hello.service   113f16a7.../172.17.8.103        active  running",
    ]
    files = format_table(
        [
            ["UNIT", "HASH", "DSTATE", "STATE", "TARGET"],
            ["hello.service", "e55c0ae", "launched", "launched", "113f16a7.../172.17.8.103"],
        ]
    )
    assert files.expandtabs(8).splitlines() == [
        "UNIT            HASH    DSTATE          STATE           TARGET",
        "hello.service   e55c0ae launched        launched        113f16a7.../172.17.8.103",
    ]


def test_go_documentation_example_with_padding_0() -> None:
    # text/tabwriter's ExampleWriter_Init: NewWriter(os.Stdout, 0, 8, 0, '\t', 0)
    text = "a\tb\tc\td\t.\n123\t12345\t1234567\t123456789\t.\n"
    assert tabwrite(text, padding=0) == "a\tb\tc\td\t\t.\n123\t12345\t1234567\t123456789\t.\n"


@pytest.mark.parametrize(
    ("width", "tabs"),
    [(0, 1), (1, 1), (6, 1), (7, 1), (8, 2), (14, 2), (15, 2), (16, 3)],
)
def test_column_is_the_widest_cell_plus_one_rounded_up_to_a_tab_stop(width: int, tabs: int) -> None:
    # the widest cell itself always gets one tab; an empty cell in the same column as many
    # as it takes to reach the column's width (widest + padding 1, rounded up to 8)
    cell = "x" * width
    assert tabwrite(f"{cell}\tend\n\tend\n") == f"{cell}\tend\n" + "\t" * tabs + "end\n"


def test_shorter_cells_get_more_tabs() -> None:
    assert tabwrite("a\tz\n0123456789\tz\n") == "a\t\tz\n0123456789\tz\n"


def test_the_trailing_cell_is_not_a_column() -> None:
    assert tabwrite("a\tlong trailing text\nbb\tx\n") == "a\tlong trailing text\nbb\tx\n"


def test_column_blocks_end_where_a_line_has_no_cell_in_that_column() -> None:
    # column 1 exists only on the first line: it is a block of its own
    assert tabwrite("a\tb\tc\nxxxxxxxxxxxxxxxx\tyy\n") == "a\t\t\tb\tc\nxxxxxxxxxxxxxxxx\tyy\n"


def test_a_line_without_tabs_flushes_the_block_above() -> None:
    text = "a\tb\nz\nxxxxxxxxxx\ty\n"
    assert tabwrite(text) == "a\tb\nz\nxxxxxxxxxx\ty\n"
    # without the separating line both rows share the column width
    assert tabwrite("a\tb\nxxxxxxxxxx\ty\n") == "a\t\tb\nxxxxxxxxxx\ty\n"


def test_empty_cells_are_padded_too() -> None:
    assert tabwrite("\tq\nabcdefghij\tr\n") == "\t\tq\nabcdefghij\tr\n"


def test_unterminated_last_line_and_trailing_tab() -> None:
    assert tabwrite("a\tb") == "a\tb"
    assert tabwrite("") == ""
    assert tabwrite("abc\t") == "abc"  # Go drops a tab that ends unflushed text


def test_widths_count_characters_not_bytes() -> None:
    assert tabwrite("héllo\tx\nab\ty\n") == "héllo\tx\nab\ty\n"
    # 8 runes (24 bytes): the column is 16 wide, so a 1-character cell needs 2 tabs
    assert tabwrite("日本語日本語日本\tx\na\ty\n") == "日本語日本語日本\tx\na\t\ty\n"


def test_space_padding() -> None:
    assert tabwrite("a\tbb\tc\nccc\td\n", padding=2, padchar=" ") == "a    bb  c\nccc  d\n"
    assert tabwrite("a\tb\n", minwidth=6, padchar=".") == "a.....b\n"


def test_single_column_table_is_left_alone() -> None:
    assert format_table([["UNIT"], ["a.service"], ["bb.service"]]) == "UNIT\na.service\nbb.service\n"
