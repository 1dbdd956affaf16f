"""The command line: thin over the public API (``oocstore --help``)."""

from __future__ import annotations

import json
import logging
from typing import Any

import click

from .errors import OocstoreError

__all__ = ["main"]


class _Group(click.Group):
    """Print oocstore errors as one line (exit 1) unless ``--debug`` is given."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (OocstoreError, OSError) as err:
            if ctx.meta.get("oocstore.debug"):
                raise
            click.echo(f"oocstore: error: {err}", err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(package_name="oocstore")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Out-of-core array stores: stream batches to disk, read them back as NumPy.

    \b
    Examples:
      oocstore demo
      oocstore info train.ooc
    """
    ctx.meta["oocstore.debug"] = debug
    if debug:
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")


@cli.command()
@click.argument("path", default="demo.ooc", required=False)
@click.option("-n", "--samples", default=20_000, show_default=True, help="Images to generate.")
@click.option(
    "--backend",
    type=click.Choice(["npy", "zarr", "hdf5"]),
    default=None,
    help="Backend (default: from the path's suffix).",
)
def demo(path: str, samples: int, backend: str | None) -> None:
    """Write a generated image dataset to PATH (default demo.ooc) and show it.

    \b
    Example:
      oocstore demo /tmp/demo.ooc -n 50000
    """
    from .demo import run_demo

    run_demo(path, samples, backend)


@cli.command()
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def info(path: str, as_json: bool) -> None:
    """Show a store's backend, fields, shapes, dtypes, length and size.

    \b
    Example:
      oocstore info train.ooc
    """
    from .progress import format_bytes
    from .reader import open as open_store

    with open_store(path) as store:
        if as_json:
            click.echo(json.dumps(store.manifest.to_json(), indent=1))
            return
        state = "complete" if store.complete else "incomplete (resumable)"
        click.echo(f"store     {store.path}")
        click.echo(f"backend   {store.backend}")
        click.echo(f"samples   {len(store):,} ({state})")
        click.echo(f"bytes     {format_bytes(store.nbytes)}")
        click.echo("fields")
        for spec in store.schema.fields:
            ragged = f"  ragged, {store.layout(spec.name)}" if spec.ragged else ""
            click.echo(f"  {spec.name:<12} {spec.dtype!s:<10} {tuple(spec.shape)!s}{ragged}")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI (the ``oocstore`` console script and ``python -m oocstore``)."""
    cli.main(args=argv, prog_name="oocstore")


if __name__ == "__main__":  # pragma: no cover
    main()
