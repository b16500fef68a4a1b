"""The ``rlvision`` command's subcommands, one module each with ``main(argv)`` (rlvision.cli dispatches to them).

:func:`command_parser` builds every command's parser the same way: its name in usage and errors
(``rlvision CMD: error: ...``, exit status 2 for every user error), the module docstring as plain text and every
option's default in its help.
"""

from __future__ import annotations

import argparse
import re


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written (examples keep their lines); each option's help ends with its default unless it
    already says it (a default of None or False is explained in the text, or is a flag's off state)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or not action.option_strings or action.required or action.default is None
                or action.default is False or action.default is argparse.SUPPRESS
                or isinstance(action, argparse._StoreConstAction)):
            return text
        return f"{text} (default: %(default)s)"


def plain_text(doc: str | None) -> str:
    """A docstring as terminal help: Sphinx roles and RST double backticks as plain names, runs of spaces inside a
    line (a backslash continuation's indentation) as one."""
    text = doc or ""
    text = re.sub(r":(?:class|func|mod|meth|data|attr):`~?([^`]+)`", r"\1", text)
    text = re.sub(r"``([^`]+)``", r"\1", text)
    lines = []
    for line in text.splitlines():
        indent = line[: len(line) - len(line.lstrip())]
        lines.append(indent + re.sub(r"(?<=\S) {2,}(?=\S)", " ", line.lstrip()))
    return "\n".join(lines)


def command_parser(command: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of ``rlvision COMMAND``: prog ``rlvision COMMAND``, ``doc`` as its description, defaults in help."""
    return argparse.ArgumentParser(prog=f"rlvision {command}", description=plain_text(doc),
                                   formatter_class=HelpFormatter)
