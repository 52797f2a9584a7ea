"""The ``privagg`` command line: one typer app; each command lives in ``fl_core.commands``."""

from __future__ import annotations

import importlib
import sys
from typing import Optional

import typer
import typer.rich_utils

__all__ = ["app", "bench_app", "main", "version"]

# Help is drawn at the terminal's width, or 120 columns when output is not a terminal
# (rich would assume 80 and squeeze every option's help into a narrow column); the
# TERMINAL_WIDTH environment variable still wins.
if not sys.stdout.isatty() and typer.rich_utils.MAX_WIDTH is None:
    typer.rich_utils.MAX_WIDTH = 120
_CONTEXT = {"help_option_names": ["--help", "-h"]}

app = typer.Typer(
    name="privagg",
    help="Private federated learning: DP + secure aggregation + an auditable epsilon ledger.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings=_CONTEXT,
)
bench_app = typer.Typer(
    help="Benchmarks that print machine-readable JSON.",
    no_args_is_help=True,
    context_settings=_CONTEXT,
)
app.add_typer(bench_app, name="bench")


def version() -> str:
    """The installed privagg version (from the package metadata)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _version

    try:
        return _version("privagg")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"privagg {version()}")
        raise typer.Exit()


@app.callback()
def _main(
    show_version: Optional[bool] = typer.Option(
        None, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Private federated learning: DP + secure aggregation + an auditable epsilon ledger."""

# Each module defines ``register(app, bench_app)`` and owns the commands it adds.
COMMAND_MODULES: tuple[str, ...] = (
    "fl_core.commands.run",
    "fl_core.commands.bench_paillier",
    "fl_core.commands.bench_secagg",
    "fl_core.commands.plan",
    "fl_core.commands.audit",
    "fl_core.commands.bench_utility",
    "fl_core.commands.keygen",
    "fl_core.commands.bench_async",
)

for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app, bench_app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
