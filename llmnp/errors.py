"""The one exception a user sees as a single line: bad input, missing files, impossible settings.

Library code raises UserError with a message that says what is wrong and what to do; the command-line
entry points (train_gpt2.py, python -m llmnp.*) catch it, print `error: <message>` and exit 1.
"""
import os
import sys


class UserError(Exception):
    pass


class Interrupted(Exception):
    """A signal stopped the program: `message` says what was and was not saved; the exit status is
    128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM), as a shell reports a killed program."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.signum = signum


def run_cli(main, argv=None):
    """Call main(argv); turn UserError, Interrupted and Ctrl-C into one line on stderr and a non-zero
    exit. main's return value, if an int, is the exit status."""
    try:
        status = main(argv)
    except UserError as e:
        print(f"{_rank_prefix()}error: {e}", file=sys.stderr)
        sys.exit(1)
    except Interrupted as e:
        print(f"{_rank_prefix()}{e}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    if isinstance(status, int) and status:
        sys.exit(status)
    return status


def _rank_prefix():
    """'[rank r] ' when running as one of several MPI processes, else ''."""
    rank, size = launcher_rank_size()
    return f"[rank {rank}] " if size > 1 else ""


# (world size, rank) environment variables that MPI launchers set for every process they start
_LAUNCHER_VARS = (("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"), ("PMI_SIZE", "PMI_RANK"),
                  ("PMIX_SIZE", "PMIX_RANK"))


def launcher_rank_size():
    """(rank, world size) as the launcher that started this process set them; (0, 1) without one.
    Read before MPI is initialised (and without it, e.g. to label an error line)."""
    for size_var, rank_var in _LAUNCHER_VARS:
        size = os.environ.get(size_var, "")
        if size.isdigit():
            rank = os.environ.get(rank_var, "0")
            return (int(rank) if rank.isdigit() else 0), int(size)
    return 0, 1
