"""The ``privagg`` command line: one typer app; each command lives in ``fl_core.commands``."""

from __future__ import annotations

import importlib

import typer

__all__ = ["app", "bench_app", "main"]

app = typer.Typer(
    name="privagg",
    help="Private federated learning: DP + secure aggregation + an auditable epsilon ledger.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks that print machine-readable JSON.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

# Each module defines ``register(app, bench_app)`` and owns the commands it adds.
COMMAND_MODULES: tuple[str, ...] = (
    "fl_core.commands.run",
    "fl_core.commands.bench_paillier",
    "fl_core.commands.bench_secagg",
    "fl_core.commands.plan",
    "fl_core.commands.audit",
    "fl_core.commands.bench_utility",
    "fl_core.commands.keygen",
)

for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app, bench_app)


def main() -> None:
    app()
