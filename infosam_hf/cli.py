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


DEBUG_ENV = "INFOSAM_DEBUG"
# Configuration errors a user can fix from the command line: one `error:` line each, no traceback.
CONFIGURATION_ERRORS = (ValueError, FileNotFoundError, FileExistsError, PermissionError, ConnectionError, TypeError,
                        RuntimeError)


def run_with_error_line(main, argv: list[str] | None = None):
    """main(argv) with configuration errors as one `error:` line; the traceback with a bare `--debug` or
    INFOSAM_DEBUG=1."""
    import os

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")
    for i, arg in enumerate(argv):  # a bare --debug is ours; `--debug underflow_overflow` is TrainingArguments'
        if arg == "--debug" and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            debug = True
            del argv[i]
            break
    try:
        return main(argv)
    except CONFIGURATION_ERRORS as error:
        if debug:
            raise
        raise SystemExit(f"error: {error} (run with --debug for the traceback)") from error
