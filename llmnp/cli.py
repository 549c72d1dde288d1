"""What every llmnp command line shares: a parser whose bad flag is one line, help that shows each
default once, and flag types that refuse NaN, negative or meaningless numbers where they are parsed.

    p = cli.ArgumentParser("python -m llmnp.generate", "Sample from a trained GPT-2.")
    p.add_argument("--temperature", type=cli.finite_nonneg, default=0.8, help="0 = greedy")

Not here: running a command (errors.run_cli turns a UserError into its one line and exit status).
"""
import argparse
import math

from llmnp.errors import UserError


class HelpFormatter(argparse.HelpFormatter):
    """Shows a flag's default as "[default]" after its help, unless the help gives it already."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, argparse.SUPPRESS, False) and "[" not in text and action.option_strings:
            text += f" [{action.default}]"
        return text


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (a UserError): what is wrong, and where the flags are listed."""

    def __init__(self, prog, description, **kw):
        super().__init__(prog=prog, description=description, formatter_class=HelpFormatter, **kw)

    def error(self, message):
        raise UserError(f"{message} ({self.prog} --help lists the flags)")


def number(convert, ok, wanted):
    """An argparse type: text -> convert(text), refused unless ok(value); `wanted` names what is allowed."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text} is not {wanted}")
        return value
    parse.__name__ = wanted        # argparse names the type in some messages
    return parse


positive_int = number(int, lambda v: v > 0, "a positive integer")
count = number(int, lambda v: v >= 0, "an integer >= 0")
positive_or_all = number(int, lambda v: v > 0 or v == -1, "a positive integer or -1")
seed_int = number(int, lambda v: 0 <= v < 2**32, "an integer in [0, 2^32)")
finite_nonneg = number(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
fraction = number(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")      # NaN fails both comparisons
open_fraction = number(float, lambda v: 0 < v <= 1, "a number in (0, 1]")
