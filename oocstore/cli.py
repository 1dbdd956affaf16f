"""The command line: thin over the public API (``oocstore --help``)."""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

import click

from .errors import CorruptStoreError, OocstoreError

__all__ = ["main"]


class _Group(click.Group):
    """Print oocstore errors as one line (exit 1) unless ``--debug`` is given."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (OocstoreError, OSError) as err:
            if ctx.meta.get("oocstore.debug"):
                raise
            click.echo(f"oocstore: error: {_as_cli_words(str(err))}", err=True)
            ctx.exit(1)


# Error messages name the Python parameters; on the command line the flags are meant.
_CLI_WORDS = {
    "overwrite=True": "--overwrite",
    "resume=True": "--resume",
    "on_error='skip'": "--on-error skip",
    "mode='RGB'": "--mode RGB",
    "mode='L'": "--mode L",
    "labels=None (CLI: --labels none)": "--labels none",
}


def _as_cli_words(message: str) -> str:
    for python, flag in _CLI_WORDS.items():
        message = message.replace(python, flag)
    return message


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(package_name="oocstore")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Out-of-core array stores: stream batches to disk, read them back as NumPy.

    \b
    Examples:
      oocstore demo
      oocstore ingest photos/ train.ooc --size 224x224
      oocstore info train.ooc
      oocstore verify train.ooc
      oocstore convert train.ooc train.zarr

    Exit codes: 0 ok, 1 error, 2 usage error or (verify) damage found.
    """
    ctx.meta["oocstore.debug"] = debug
    if debug:
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")


_BACKEND = click.option(
    "--backend",
    type=click.Choice(["npy", "zarr", "hdf5"]),
    default=None,
    help="Backend (default: from the path's suffix: .zarr, .h5, else npy).",
)


@cli.command()
@click.argument("path", default="demo.ooc", required=False)
@click.option("-n", "--samples", default=20_000, show_default=True, help="Images to generate.")
@click.option(
    "--photos",
    type=click.IntRange(min=0),
    default=2000,
    show_default=True,
    help="JPEGs to generate and ingest into PATH's -photos store (0: skip that part).",
)
@_BACKEND
@click.pass_context
def demo(ctx: click.Context, path: str, samples: int, photos: int, backend: str | None) -> None:
    """Write a generated dataset to PATH (default demo.ooc), ingest generated photos, read them.

    First, SAMPLES generated 64x64 images and their labels are streamed into PATH, and the
    rate is shown beside a raw write + fsync of the same bytes in the same directory (the
    disk's limit). Then PHOTOS photo-like JPEGs are generated in a temporary folder beside
    PATH (deleted at the end) and ingested with `oocstore ingest --size 64x64` into
    PATH-photos (demo.ooc -> demo-photos.ooc). A second Python process then opens that store
    read-only and reads all of it, to show its private memory beside the store's size, and
    `oocstore info` describes it.

    \b
    Examples:
      oocstore demo
      oocstore demo /tmp/demo.ooc -n 50000 --photos 10000
    """
    import importlib.util

    from . import demo as demo_

    demo_.run_demo(path, samples, backend).close()
    if photos == 0:
        return
    click.echo()
    if importlib.util.find_spec("PIL") is None:
        click.echo("skipped the image folder: it needs Pillow (pip install 'oocstore[images]')")
        return
    dst = demo_.photos_store_path(path)
    with demo_.photo_folder(dst.resolve().parent, photos) as folder:
        ctx.invoke(
            ingest, src=str(folder), dst=str(dst), size=_DEMO_SIZE, overwrite=True, backend=backend
        )
    click.echo()
    demo_.report_shared_read(dst)
    click.echo()
    ctx.invoke(info, path=str(dst))


_DEMO_SIZE = (64, 64)  # small, so the demo's ingest is quick; real data would use e.g. 224x224


@cli.command()
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def info(path: str, as_json: bool) -> None:
    """Show a store's backend, fields, shapes, dtypes, length, size, ragged layouts and attrs.

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
            line = f"  {spec.name:<12} {spec.dtype!s:<10} {tuple(spec.shape)!s}"
            click.echo(line + _ragged_note(store, spec.name) if spec.ragged else line)
        if store.attrs:
            click.echo("attrs")
            for key, value in store.attrs.items():
                click.echo(f"  {key:<12} {_attr_note(key, value, store.attrs)}")


def _ragged_note(store: Any, field: str) -> str:
    """How a ragged field is laid out, and the range of its true shapes."""
    kind = store.layout(field)
    if kind == "padded":
        fill = store.manifest.layout(field).fill
        note = f"  ragged: padded to the largest shape with {fill!r}"
    else:
        note = "  ragged: packed end to end (values + offsets)"
    shapes = store.shapes(field)
    if len(shapes):
        lo = tuple(int(d) for d in shapes.min(axis=0))
        hi = tuple(int(d) for d in shapes.max(axis=0))
        note += f"; true shapes {lo} to {hi} in {field}.shapes"
    return note


def _attr_note(key: str, value: Any, attrs: dict[str, Any]) -> str:
    """One line for one attr: class lists and skip counts in words, anything else as JSON."""
    if key == "classes" and isinstance(value, list):
        names = ", ".join(map(str, value))
        return f"{len(value)}: {names if len(names) <= 70 else names[:67] + '...'}"
    if key == "skipped" and isinstance(value, int) and attrs.get("skipped_list"):
        return f"{value} (listed in {attrs['skipped_list']})"
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 90 else text[:87] + "..."


def _parse_size(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[int, int] | None:
    """``224x224`` (height x width) or ``224`` (square) -> ``(224, 224)``."""
    if value is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX\u00d7,]\s*(\d+)\s*)?", value)
    if m is None or int(m.group(1)) == 0 or (m.group(2) is not None and int(m.group(2)) == 0):
        msg = f"{value!r} is not a size: use HEIGHTxWIDTH, e.g. 224x224, or one number for a square"
        raise click.BadParameter(msg, ctx=ctx, param=param)
    h = int(m.group(1))
    return h, int(m.group(2)) if m.group(2) is not None else h


@cli.command()
@click.argument("src", type=click.Path(file_okay=False))
@click.argument("dst")
@click.option(
    "--size",
    callback=_parse_size,
    metavar="HxW",
    help="Resize every image to HEIGHTxWIDTH (e.g. 224x224). Default: keep sizes, pad.",
)
@click.option(
    "--no-pad",
    "no_pad",
    is_flag=True,
    help="Without --size: pack images end to end instead of padding to the largest.",
)
@click.option(
    "--mode",
    type=click.Choice(["RGB", "L", "keep"], case_sensitive=False),
    metavar="[RGB|L|keep]",
    default="RGB",
    show_default=True,
    help="Convert to RGB, to grayscale (L), or keep each image's channels (must agree).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help="Decoding processes (default: usable CPUs; 0: decode in this process).",
)
@click.option(
    "--labels",
    default="folders",
    show_default=True,
    metavar="folders|none|CSV",
    help="Class subfolders, no labels, or a CSV file of path,label rows.",
)
@click.option(
    "--on-error",
    type=click.Choice(["skip", "fail"]),
    default="skip",
    show_default=True,
    help="Skip unreadable images (and list them in DST.skipped.txt) or stop at the first.",
)
@click.option("--resume", is_flag=True, help="Continue an interrupted ingest into DST.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store at DST.")
@_BACKEND
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show a progress bar (default: when stderr is a terminal).",
)
def ingest(
    src: str,
    dst: str,
    size: tuple[int, int] | None,
    no_pad: bool,
    mode: str,
    workers: int | None,
    labels: str,
    on_error: str,
    resume: bool,
    overwrite: bool,
    backend: str | None,
    progress: bool | None,
) -> None:
    """Decode every image under SRC into the store DST (fields images, labels, paths).

    Images are found recursively (jpg, jpeg, png, bmp, gif, tif, tiff, webp, ppm, pgm; any
    case), sorted by path, decoded in parallel with EXIF orientation applied. With the
    default --labels folders, the first folder level under SRC names the class
    (SRC/cat/1.jpg has class "cat"); class names are kept in the store's attrs.

    \b
    Examples:
      oocstore ingest photos/ train.ooc
      oocstore ingest photos/ train.ooc --size 224x224 --workers 8
      oocstore ingest scans/ scans.zarr --mode L --labels labels.csv
      oocstore ingest photos/ train.ooc --resume      # after an interruption
    """
    from .ingest import ingest_images, skipped_list_path

    t0 = time.perf_counter()
    store = ingest_images(
        src,
        dst,
        backend=backend,
        size=size,
        pad=not no_pad,
        mode=mode,
        workers=workers,
        labels=None if labels.lower() == "none" else labels,
        on_error="fail" if on_error == "fail" else "skip",
        resume=resume,
        progress=progress,
        overwrite=overwrite,
    )
    seconds = time.perf_counter() - t0
    with store:
        n = len(store)
        spec = store.schema["images"]
        click.echo(
            f"ingested {n:,} images into {str(store.path)!r} ({store.backend} backend) in "
            f"{seconds:.1f} s: images {spec.dtype} {tuple(spec.shape)}"
            + (f" ({store.layout('images')}, true shapes kept)" if spec.ragged else "")
        )
        classes = store.attrs.get("classes")
        if isinstance(classes, list):
            names = ", ".join(map(str, classes))
            click.echo(
                f"  {len(classes)} classes: {names if len(names) <= 70 else names[:67] + '...'}"
            )
        skipped = int(store.attrs.get("skipped") or 0)
        if skipped:
            click.echo(
                f"  skipped {skipped} unreadable image(s): listed in {skipped_list_path(dst)}"
            )
        else:
            click.echo("  skipped 0 images")


@cli.command()
@click.argument("path")
@click.pass_context
def verify(ctx: click.Context, path: str) -> None:
    """Check every committed span of a store against the checksums the writer recorded.

    Exits 0 when the store is intact, 2 when something is damaged (each damaged field and
    row range is printed), 1 when the store cannot be checked (e.g. it does not exist).

    \b
    Example:
      oocstore verify train.ooc && echo intact
    """
    from .reader import open as open_store

    try:
        with open_store(path) as store:
            problems = store.verify()
            n, fields = len(store), len(store.fields)
            lines = [f"damaged: {p}{_samples_note(store, p)}" for p in problems]
    except CorruptStoreError as err:
        click.echo(f"damaged: {err}")
        ctx.exit(2)
    if not problems:
        click.echo(f"ok: {path}: {n:,} samples in {fields} field(s) match their checksums")
        return
    click.echo("\n".join(lines))
    click.echo(f"{path}: {len(problems)} damaged span(s)", err=True)
    ctx.exit(2)


def _samples_note(store: Any, problem: Any) -> str:
    """For a packed field's values (rows are elements), the samples the damaged rows hold."""
    if not str(problem.array).endswith(".values") or problem.field not in store:
        return ""
    import numpy as np

    try:
        offsets = np.asarray(store[problem.field].offsets)
        first = max(int(np.searchsorted(offsets, problem.start, side="right")) - 1, 0)
        stop = int(np.searchsorted(offsets, problem.stop, side="left"))
    except (OocstoreError, ValueError, AttributeError):
        return ""
    return f" (samples {first}-{stop})"


@cli.command()
@click.argument("src")
@click.argument("dst")
@_BACKEND
@click.option(
    "--chunks",
    type=click.IntRange(min=1),
    default=None,
    help="Samples per chunk in the new store (zarr, hdf5; default: sized automatically).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing store at DST.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show a progress bar (default: when stderr is a terminal).",
)
def convert(
    src: str,
    dst: str,
    backend: str | None,
    chunks: int | None,
    overwrite: bool,
    progress: bool | None,
) -> None:
    """Copy the store SRC to DST, e.g. to another backend (chosen by DST's suffix).

    Fields, dtypes, ragged layouts, true shapes and attrs are kept; memory stays bounded.

    \b
    Examples:
      oocstore convert train.ooc train.zarr
      oocstore convert train.ooc train.h5 --chunks 256
    """
    from .api import convert as convert_store

    t0 = time.perf_counter()
    store = convert_store(
        src, dst, backend=backend, chunks=chunks, overwrite=overwrite, progress=progress
    )
    seconds = time.perf_counter() - t0
    with store:
        click.echo(
            f"converted {len(store):,} samples from {src!r} to {str(store.path)!r} "
            f"({store.backend} backend) in {seconds:.1f} s"
        )


def main(argv: list[str] | None = None) -> None:
    """Run the CLI (the ``oocstore`` console script and ``python -m oocstore``)."""
    cli.main(args=argv, prog_name="oocstore")


if __name__ == "__main__":  # pragma: no cover
    main()
