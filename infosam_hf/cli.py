"""The example scripts' argument parser: a bad flag gives one `error:` line, not the whole usage first.

`HfArgumentParser` is an `argparse.ArgumentParser`, whose `error()` prints the full usage (150 lines
for train.py's `TrainingArguments`) before the message, burying the one line that says what is wrong.
"""

from __future__ import annotations

import sys

from transformers import HfArgumentParser


class ScriptArgumentParser(HfArgumentParser):
    """`HfArgumentParser` whose parse errors are one line naming the flag, the value and what was expected, e.g.
    `error: argument --max_steps: invalid int value: 'ten' (see --help)`, with exit status 2 as argparse's."""

    def error(self, message: str):
        sys.stderr.write(f"error: {message} (see --help)\n")
        sys.exit(2)
