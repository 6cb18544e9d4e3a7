"""JSON-lines reading never loses data: only a partial last line from a killed write is
left out (and cut only by the writer, before it appends); any other bad line is an error
naming the file and line, with the file as it was."""

from __future__ import annotations

import pytest

from orchestrator.errors import ConfigError
from orchestrator.files import read_jsonl

ROWS = b'{"a": 1}\n{"a": 2}\n'


@pytest.mark.parametrize(
    ("content", "line", "why"),
    [
        (b"pool:\n  experts: []\n", 1, "not JSON"),  # another file, given by mistake
        (b'{"a": 1}\nnot json\n{"a": 3}\n', 2, "not JSON"),  # a bad line in the middle
        (b'{"a": 1}\n[1, 2]\n', 2, "list, not a JSON object"),
        (b"hello", 1, "not JSON"),  # one line without a newline, not one of our rows
    ],
    ids=["yaml", "middle", "not-object", "text"],
)
@pytest.mark.parametrize("repair", [False, True])
def test_a_file_that_is_not_ours_is_an_error_and_left_as_it_was(
    tmp_path, content, line, why, repair
):
    path = tmp_path / "f.jsonl"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=rf"f.jsonl: line {line} is {why}.*left as it is"):
        read_jsonl(path, repair=repair)
    assert path.read_bytes() == content


def test_a_partial_last_line_is_left_out_and_cut_only_when_repairing(tmp_path):
    path = tmp_path / "f.jsonl"
    for partial in (b'{"a": 3, "b"', b'{"a": 3}'):  # cut mid-row, or before its newline
        path.write_bytes(ROWS + partial)
        assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
        assert path.read_bytes() == ROWS + partial  # a reader changes nothing
        assert read_jsonl(path, repair=True) == [{"a": 1}, {"a": 2}]
        assert path.read_bytes() == ROWS


def test_blank_lines_are_no_rows(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'\n{"a": 1}\n  \n{"a": 2}\n\n')
    assert read_jsonl(path, repair=True) == [{"a": 1}, {"a": 2}]
    assert path.read_bytes() == b'\n{"a": 1}\n  \n{"a": 2}\n\n'
