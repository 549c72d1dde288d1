"""The one exception a user sees as a single line: bad input, missing files, impossible settings.

Library code raises UserError with a message that says what is wrong and what to do; the command-line
entry points (train_gpt2.py, python -m llmnp.*) catch it, print `error: <message>` and exit 1.
"""
import sys


class UserError(Exception):
    pass


def run_cli(main, argv=None):
    """Call main(argv); turn UserError (and Ctrl-C) into one line on stderr and a non-zero exit."""
    try:
        return main(argv)
    except UserError as e:
        print(f"{_rank_prefix()}error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def _rank_prefix():
    """'[rank r] ' when running as one of several MPI processes, else ''."""
    from llmnp.distributed import launcher_rank_size
    rank, size = launcher_rank_size()
    return f"[rank {rank}] " if size > 1 else ""
