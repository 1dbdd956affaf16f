"""MkDocs hooks for the oocstore site (``hooks:`` in mkdocs.yml).

``<!-- cli-help -->`` on a line of its own in a page becomes the ``--help`` text of ``oocstore``
and of each of its commands, taken from the click commands while the site builds, so the
command-line reference is always what the installed CLI prints.
"""

from __future__ import annotations

from typing import Any

import click

MARKER = "<!-- cli-help -->"
WIDTH = 78  # columns of the help text: fits the Material theme's code blocks


def cli_help_markdown() -> str:
    """The help of ``oocstore`` and every command, as Markdown sections of text blocks."""
    from oocstore.cli import cli

    # The group's context_settings (``-h`` as well as ``--help``), as ``oocstore --help`` has.
    root = click.Context(
        cli,
        info_name="oocstore",
        terminal_width=WIDTH,
        max_content_width=WIDTH,
        **cli.context_settings,
    )
    parts = ["## oocstore", "", "```text", root.get_help(), "```", ""]
    for name in cli.list_commands(root):
        command = cli.get_command(root, name)
        if command is None or command.hidden:
            continue
        ctx = click.Context(
            command, info_name=name, parent=root, terminal_width=WIDTH, max_content_width=WIDTH
        )
        parts += [f"## oocstore {name}", "", "```text", ctx.get_help(), "```", ""]
    return "\n".join(parts)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Expand the ``cli-help`` marker of a page into the CLI reference."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, cli_help_markdown())
