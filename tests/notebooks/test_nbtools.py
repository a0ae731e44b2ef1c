"""The output comparison used by the regression test catches changes and respects nbval's tags."""

import copy

import nbformat

from tools.nbtools import compare


def _nb(*cells):
    nb = nbformat.v4.new_notebook()
    for source, text, tags in cells:
        cell = nbformat.v4.new_code_cell(source, metadata={"tags": tags})
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
        nb.cells.append(cell)
    return nb


def test_identical_outputs_pass():
    nb = _nb(("print(1)", "1\n", []), ("print(2)", "2\n", []))
    assert compare(nb, copy.deepcopy(nb)) == []


def test_changed_number_fails():
    a = _nb(("print(x)", "loss 0.1234\n", []))
    b = _nb(("print(x)", "loss 0.1235\n", []))
    problems = compare(a, b)
    assert len(problems) == 1 and "0.1234" in problems[0]


def test_ignored_cell_passes():
    a = _nb(("t()", "took 1.2 s\n", ["nbval-ignore-output"]))
    b = _nb(("t()", "took 3.4 s\n", ["nbval-ignore-output"]))
    assert compare(a, b) == []


def test_sanitized_addresses_and_carriage_returns():
    a = _nb(("f()", "<Line2D at 0x7f00aa>\n", []), ("bar()", "10%\r100%|done\n", []))
    b = _nb(("f()", "<Line2D at 0x7f11bb>\n", []), ("bar()", "50%\r100%|done\n", []))
    assert compare(a, b) == []


def test_different_code_fails():
    a = _nb(("print(1)", "1\n", []))
    b = _nb(("print(2)", "1\n", []))
    assert "code cells differ" in compare(a, b)[0]


def test_stream_chunks_are_merged():
    a = _nb(("print(1, 2)", "1 2\n", []))
    b = _nb(("print(1, 2)", "1", []))
    b.cells[0].outputs.append(nbformat.v4.new_output("stream", name="stdout", text=" 2\n"))
    assert compare(a, b) == []


def test_myst_nb_merged_stream_with_leftover_copies():
    """myst-nb writes the merged text into the first chunk and keeps the later chunks."""
    stored = _nb(("f()", "a 1\n", []))
    stored.cells[0].outputs.append(nbformat.v4.new_output("stream", name="stdout", text="b 2\n"))
    executed = _nb(("f()", "a 1\nb 2\n", []))
    executed.cells[0].outputs.append(nbformat.v4.new_output("stream", name="stdout", text="b 2\n"))
    assert compare(executed, stored, executed_by_myst_nb=True) == []
    changed = _nb(("f()", "a 1\nb 3\n", []))
    changed.cells[0].outputs.append(nbformat.v4.new_output("stream", name="stdout", text="b 3\n"))
    assert len(compare(changed, stored, executed_by_myst_nb=True)) == 1


def test_repeated_identical_lines_are_not_mistaken_for_a_merge():
    stored = _nb(("f()", "x\n", []))
    stored.cells[0].outputs.append(nbformat.v4.new_output("stream", name="stdout", text="x\n"))
    executed = _nb(("f()", "x\nx\n", []))
    executed.cells[0].outputs.append(nbformat.v4.new_output("stream", name="stdout", text="x\n"))
    assert compare(executed, stored, executed_by_myst_nb=True) == []
    single = _nb(("f()", "x\n", []))
    assert len(compare(single, stored, executed_by_myst_nb=True)) == 1
