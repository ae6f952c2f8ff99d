"""One error path for every command: exit code 2 and one line naming the file (or key) and the problem.

Commands raise `InputError` (or any `ValueError` / `OSError`, which the loaders of both packages raise with the
file named in the message) for problems a user can fix. `run` turns those into
``PROG: error: MESSAGE`` on stderr and exit code 2, without a traceback unless ``--debug`` is given. Anything
else is a bug: it keeps its traceback (exit code 1). Ctrl-C that a command does not handle itself exits 130.
"""

import argparse
import os
import sys
import traceback

EXIT_INPUT = 2  # bad input, output folder or config value (argparse uses 2 for usage errors too)
EXIT_INTERRUPTED = 130  # 128 + SIGINT


class InputError(ValueError):
    """A user-supplied file, folder, argument or config value is missing, unreadable or inconsistent.

    The message names the file (or key) first: ``"path/to/file.json: hint 3 lies outside the 640x480 image"``.
    """


def fail(where, problem):
    """Raise InputError(f"{where}: {problem}") with `where` a path or a config key."""
    raise InputError(f"{os.fspath(where) if isinstance(where, os.PathLike) else where}: {problem}")


def config_variant(get_config, variant):
    """`get_config(variant)` of a configs module; an unknown variant name is an InputError naming --config."""
    try:
        return get_config(variant)
    except ValueError as e:
        raise InputError(f"--config: {e}") from None


def describe(exc):
    """One line for an input error. OSErrors become ``FILE: reason`` (e.g. ``out/x.mp4: Permission denied``)."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{os.fspath(exc.filename)}: {exc.strerror}"
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())  # one line, whatever the message held


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (``PROG: error: ... (see PROG --help)``), exit code 2."""

    def error(self, message):
        self.exit(EXIT_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_common_flags(parser):
    """--debug on a (sub)parser: show the traceback of an input error instead of one line."""
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    return parser


def run(main, argv, prog):
    """Call main(argv) and map its outcome to an exit code (see the module docstring).

    ``--debug`` anywhere in argv is honoured even when argument parsing itself fails.
    """
    argv = list(argv)
    debug = "--debug" in argv
    try:
        code = main(argv)
    except SystemExit as e:  # argparse (--help, usage errors) exits; return its code to in-process callers
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_INPUT)
    except (ValueError, OSError) as e:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {describe(e)}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0 if code is None else int(code)
