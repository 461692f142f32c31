"""Issue 29's house rule: no module of infosam_hf over ~500 lines without a one-line reason at its top."""

import ast
import os
import re

import infosam_hf

PACKAGE = os.path.dirname(infosam_hf.__file__)
LIMIT = 500
REASON = re.compile(r"\(~?\d+ lines[,:]")  # "(~610 lines: why ...)" in the module docstring


def modules():
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                yield os.path.join(folder, name)


def over_limit_without_reason(paths, root=PACKAGE) -> list[str]:
    found = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            source = f.read()
        if source.count("\n") <= LIMIT:
            continue
        docstring = ast.get_docstring(ast.parse(source)) or ""
        if not REASON.search(docstring):
            found.append(os.path.relpath(path, root))
    return found


def test_every_module_over_500_lines_says_why_at_its_top():
    assert over_limit_without_reason(modules()) == []


def test_the_check_flags_a_long_module_without_a_reason_and_accepts_one_with(tmp_path):
    body = "x = 1\n" * (LIMIT + 5)
    bare = tmp_path / "bare.py"
    bare.write_text('"""A long module."""\n' + body)
    reasoned = tmp_path / "reasoned.py"
    reasoned.write_text('"""A long module.\n\n(~505 lines: one table of constants.)\n"""\n' + body)
    short = tmp_path / "short.py"
    short.write_text('"""Short."""\nx = 1\n')
    assert over_limit_without_reason([str(bare), str(reasoned), str(short)], root=tmp_path) == ["bare.py"]
