"""Errors shared by every module, importable before torch and MLflow so that bad input is rejected in a blink."""

import sys
from typing import NoReturn

from aos_bench.credentials import masked

USAGE_EXIT = 2  # exit code of a command rejected for bad input (config value, override, missing files), as argparse's


class UsageError(Exception):
    """Bad input from the user (config value, missing files): shown as one line, no traceback."""


class StoreFailed(Exception):
    """The tracking store failed, not the job (it could not be opened, or a run not logged): the message is one line."""


class Diverged(RuntimeError):
    """The training loss became NaN or infinite: the run ends FAILED, its message names the step and what to lower."""


def reject(message: str) -> NoReturn:
    """Stop the command for bad input: `aos_bench: <message>` on one line of stderr (URL passwords masked), exit code 2."""
    print(f"aos_bench: {masked(message)}", file=sys.stderr)
    raise SystemExit(USAGE_EXIT)
