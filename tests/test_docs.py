"""Every code example in docs/ and README.md runs, so the docs cannot drift from the code.

Each page's fenced ``python`` blocks run in order in one namespace (``__name__ == "__main__"``,
as in a script) in a fresh working directory. Shell blocks (``sh``, ``console``) run when a
``<!-- docs-test: run -->`` comment stands right before them: each command line (``$ `` stripped,
comments dropped) runs through bash with the installed ``oocstore`` entry point on the PATH and
must exit 0. ``<!-- docs-test: skip (reason) -->`` right before a block leaves it out. A page
whose examples import a framework that is not installed (torch, tensorflow, keras, jax, PIL,
dask...) is skipped, naming it.

A top-level ``print(...)`` with a comment on its line states what it prints: the comment must
begin with the printed text (spaces and line breaks compared loosely), so
``print(X.shape)  # (100, 3)`` fails the page when the shape changes, and
``print(n)  # 621 valid pixels`` may go on to explain.
"""

from __future__ import annotations

import ast
import importlib.util
import io
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted(p.relative_to(ROOT) for p in (ROOT / "docs").rglob("*.md"))
ALL_PAGES = [*DOCS, Path("README.md")]
OPTIONAL = ("torch", "tensorflow", "keras", "jax", "PIL", "dask", "distributed", "sklearn")
SHELL = ("sh", "bash", "console", "shell")

_FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)\s*$")
_MARKER = re.compile(r"^<!--\s*docs-test:\s*(.*?)\s*-->$")
_SKIP = re.compile(r"skip \(\S.*\)")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page: its language, first line number, text and marker."""

    lang: str
    line: int
    text: str
    marker: str | None


def blocks_of(text: str) -> list[Block]:
    """Split Markdown into its fenced code blocks, each with the marker that precedes it."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    previous = ""  # the last non-blank line outside a block
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        ticks, lang = fence.groups()
        start = i + 1
        i = start
        while i < len(lines) and lines[i].rstrip() != ticks:
            i += 1
        if i == len(lines):
            msg = f"unclosed code block opened on line {start}"
            raise ValueError(msg)
        marker = _MARKER.match(previous)
        blocks.append(
            Block(lang, start + 1, "\n".join(lines[start:i]) + "\n", marker and marker[1])
        )
        previous = ""
        i += 1
    return blocks


def imported_modules(source: str) -> set[str]:
    """Top-level names of every module a block imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def shell_commands(block: Block) -> list[str]:
    """The command lines of a shell block: ``$ `` prompts stripped, output and comments left out."""
    prompted = any(line.startswith("$ ") for line in block.text.splitlines())
    commands = []
    for line in block.text.splitlines():
        if prompted:
            if not line.startswith("$ "):
                continue  # output shown after a prompt
            line = line[2:]
        command = line.split(" #", 1)[0].strip()
        if command and not command.startswith("#"):
            commands.append(command)
    return commands


def _loose(text: str) -> str:
    return " ".join(text.split())


class PrintCheck:
    """Stands in for ``print`` on the top-level lines that say what they print."""

    def __init__(self, page: Path) -> None:
        self.page = page

    def __call__(self, line: int, comment: str, *args: object, **kwargs: object) -> None:
        buffer = io.StringIO()
        print(*args, **kwargs, file=buffer)  # type: ignore[call-overload]
        printed = buffer.getvalue()
        sys.stdout.write(printed)
        if not _loose(comment).startswith(_loose(printed)):
            pytest.fail(
                f"{self.page}:{line}: the comment says `{comment}` "
                f"but the line printed `{printed.rstrip()}`"
            )


def with_print_checks(source: str, first_line: int) -> ast.Module:
    """Parse a block (numbered from ``first_line``), top-level commented prints checked."""
    padded = "\n" * (first_line - 1) + source
    tree = ast.parse(padded)
    lines = padded.splitlines()
    for stmt in tree.body:
        call = stmt.value if isinstance(stmt, ast.Expr) else None
        if not (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Name)
            and call.func.id == "print"
            and stmt.end_lineno == stmt.lineno
        ):
            continue
        rest = lines[stmt.lineno - 1][stmt.end_col_offset :].strip()
        if not rest.startswith("#"):
            continue
        call.func = ast.Name("__docs_print__", ast.Load())
        call.args[:0] = [ast.Constant(stmt.lineno), ast.Constant(rest[1:].strip())]
    return ast.fix_missing_locations(tree)


def run_shell(command: str, page: Path, block: Block) -> None:
    """Run one documented command with the installed ``oocstore`` first on the PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)  # this checkout's code, whichever tree the venv installed
    done = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(
            f"{page}:{block.line}: `{command}` exited {done.returncode}\n"
            f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        )


def runnable_blocks(page: Path) -> list[Block]:
    """The blocks of a page that run: python blocks not skipped, shell blocks marked to run."""
    blocks = blocks_of((ROOT / page).read_text())
    return [
        b
        for b in blocks
        if (b.lang == "python" and b.marker is None) or (b.lang in SHELL and b.marker == "run")
    ]


PAGES = [page for page in ALL_PAGES if runnable_blocks(page)]


@pytest.mark.parametrize("page", ALL_PAGES, ids=str)
def test_markers_are_known(page: Path) -> None:
    for block in blocks_of((ROOT / page).read_text()):
        marker = block.marker
        if marker is not None and marker != "run" and not _SKIP.fullmatch(marker):
            pytest.fail(
                f"{page}:{block.line}: unknown marker 'docs-test: {marker}'; "
                "use 'docs-test: run' or 'docs-test: skip (reason)'"
            )
        if marker == "run" and block.lang not in SHELL:
            pytest.fail(f"{page}:{block.line}: 'docs-test: run' is for shell blocks")


@pytest.mark.parametrize("page", PAGES, ids=str)
def test_page_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runnable = runnable_blocks(page)
    python = [b for b in runnable if b.lang == "python"]
    needed = set().union(*(imported_modules(b.text) for b in python))
    for name in OPTIONAL:
        if name in needed and importlib.util.find_spec(name) is None:
            pytest.skip(f"{page} imports {name}, which is not installed")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # a page's example may import a module it wrote
    namespace: dict[str, object] = {"__name__": "__main__", "__docs_print__": PrintCheck(page)}
    for block in runnable:
        if block.lang == "python":
            # Line numbers are the page's, in tracebacks and in the print checks.
            code = compile(with_print_checks(block.text, block.line), str(page), "exec")
            exec(code, namespace)
        else:
            for command in shell_commands(block):
                run_shell(command, page, block)


def test_blocks_of_reads_markers_and_lines() -> None:
    text = (
        "# Page\n\n```python\nx = 1\n```\n\n<!-- docs-test: skip (needs a GPU) -->\n"
        "```python\ncuda()\n```\n<!-- docs-test: run -->\n\n```console\n$ oocstore info a.ooc"
        "  # show it\nbackend npy\n```\n"
    )
    blocks = blocks_of(text)
    assert [(b.lang, b.line, b.marker) for b in blocks] == [
        ("python", 4, None),
        ("python", 9, "skip (needs a GPU)"),
        ("console", 14, "run"),
    ]
    assert shell_commands(blocks[2]) == ["oocstore info a.ooc"]
    with pytest.raises(ValueError, match="unclosed code block opened on line 1"):
        blocks_of("```python\nx = 1\n")


def test_a_commented_print_must_print_what_its_comment_says() -> None:
    source = 'x = (2, 3)\nprint(x)  # (2, 3): a shape\nprint(len(x))  # 3\nprint("free")\n'
    namespace: dict[str, object] = {"__docs_print__": PrintCheck(Path("page.md"))}
    with pytest.raises(
        pytest.fail.Exception, match=r"page.md:12: the comment says `3` but the line printed `2`"
    ):
        exec(compile(with_print_checks(source, 10), "page.md", "exec"), namespace)


def test_the_how_to_pages_have_examples() -> None:
    # Every page that teaches by example is run above; losing a page's examples to a stray
    # marker or fence would silently drop it from this test.
    for name in ("index", "getting-started", "generators", "pytorch", "tensorflow", "images"):
        assert Path("docs", f"{name}.md") in PAGES
    for name in ("tensors", "big-arrays", "training", "concepts", "cli", "format", "hdf5"):
        assert Path("docs", f"{name}.md") in PAGES
    assert Path("README.md") in PAGES


def test_every_page_is_in_the_site_nav() -> None:
    # mkdocs --strict also refuses pages left out of the nav; this says which one without a build.
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in ALL_PAGES:
        if page.parts[0] == "docs":
            name = page.relative_to("docs").as_posix()
            assert re.search(rf":\s*{re.escape(name)}\s*$", nav, re.M), f"{name} not in nav"


def test_the_cli_reference_is_every_commands_help() -> None:
    from oocstore.cli import cli

    sys.path.insert(0, str(ROOT))
    try:
        import mkdocs_hooks
    finally:
        sys.path.remove(str(ROOT))
    page = mkdocs_hooks.on_page_markdown((ROOT / "docs" / "cli.md").read_text())
    assert mkdocs_hooks.MARKER not in page
    assert "Usage: oocstore [OPTIONS] COMMAND [ARGS]..." in page
    for name in cli.commands:
        assert f"## oocstore {name}\n" in page
        assert f"Usage: oocstore {name} [OPTIONS]" in page
    assert "-h, --help" in page


def test_every_public_name_is_in_the_api_reference() -> None:
    import oocstore

    directives = set()
    for page in (ROOT / "docs" / "api").glob("*.md"):
        directives |= set(re.findall(r"^::: (\S+)$", page.read_text(), re.M))
    for name in oocstore.__all__:
        if name.startswith("__"):
            continue
        obj = getattr(oocstore, name)
        module = obj.__module__
        shown = {f"oocstore.{name}", f"{module}.{name}", module}
        assert shown & directives, f"oocstore.{name} is not in docs/api/"
        assert (obj.__doc__ or "").strip(), f"oocstore.{name} has no docstring"
