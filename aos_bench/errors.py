"""Errors shared by every module, importable before torch and MLflow so that bad input is rejected in a blink."""

import sys
from typing import NoReturn

USAGE_EXIT = 2  # exit code of a command rejected for bad input (config value, override, missing files), as argparse's


class UsageError(Exception):
    """Bad input from the user (config value, missing files): shown as one line, no traceback."""


class Diverged(RuntimeError):
    """The training loss became NaN or infinite: the run ends FAILED, its message names the step and what to lower."""


def reject(message: str) -> NoReturn:
    """Stop the command for bad input: `aos_bench: <message>` on one line of stderr, exit code 2, no traceback."""
    print(f"aos_bench: {message}", file=sys.stderr)
    raise SystemExit(USAGE_EXIT)
