"""`fbt-tui`: the Typer entry point of the workbench TUI."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

cli = typer.Typer(add_completion=False, help="FBT Workbench: pick a pair, preview the fusion, train, watch.")


@cli.command()
def tui(
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Folder holding run folders.")] = Path("runs"),
    preset: Annotated[Optional[Path], typer.Option("--preset", help="Preset TOML to load: its pair, input size and model kwargs are what the header, Preview and Configure show.")] = None,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    """Start the workbench. Set FBT_ENGINE to use another engine command than `fbt-engine`."""
    if version:
        from importlib.metadata import version as package_version
        typer.echo(f"fbt-tui {package_version('fbt-workbench')}")
        raise typer.Exit()
    from .app import FbtApp  # imported here so `--help` stays instant

    FbtApp(runs_dir=runs_dir, preset=preset).run()


def main() -> None:
    """Console-script entry point (`fbt-tui`)."""
    cli()


if __name__ == "__main__":
    main()
