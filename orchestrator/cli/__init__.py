"""The `conclave` command line: a thin shell over the orchestrator and the pool.

One module per command group; each command parses its options, calls one library
function and renders the result (`render.py`). Heavy libraries (torch, vLLM, Ray,
litellm) load only inside the commands that need them, so `conclave --help` is instant.
"""

from __future__ import annotations

import inspect

import typer

from orchestrator.cli import agents, bench, config, experts, kernels, pool, serve, zoo
from orchestrator.cli.eval import eval_cmd, profile_cmd, route_cmd

app = typer.Typer(
    name="conclave",
    help="Conclave: answer each question with the right expert LLMs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _options(
    verbose: bool = typer.Option(
        False,
        "--verbose",
        "-v",
        help="Log what Conclave does (INFO) and leave libraries' own logging on "
        "(litellm's, Ray's); by default only their errors show.",
    ),
) -> None:
    if verbose:
        import logging
        import os

        os.environ["CONCLAVE_VERBOSE"] = "1"
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")


app.add_typer(config.app, name="config")
app.add_typer(pool.app, name="pool")
app.add_typer(bench.app, name="bench")
app.add_typer(zoo.app, name="zoo")
app.command("eval")(eval_cmd)
app.command("profile")(profile_cmd)
app.command("route")(route_cmd)
app.command("serve")(serve.serve_cmd)
app.add_typer(experts.app, name="experts")
app.add_typer(kernels.app, name="kernels")
app.add_typer(agents.app, name="agents")


def _reflow(text: str) -> str:
    """A help text's paragraphs each on one line (a paragraph marked with \\b kept)."""
    return "\n\n".join(
        p if p.startswith("\b") else " ".join(p.split())
        for p in inspect.cleandoc(text).split("\n\n")
    )


def _reflow_help(t: typer.Typer) -> None:
    """Typer keeps a docstring's line breaks inside the paragraphs after the first, and
    then wraps the lines again to the terminal: in 80 columns sentences broke mid-line
    ("with each" / "strategy"). Each command's help is its docstring with every paragraph
    on one line, for the terminal to wrap."""
    for cmd in t.registered_commands:
        text = cmd.help or (cmd.callback.__doc__ if cmd.callback else None)
        if text:
            cmd.help = _reflow(text)
    for group in t.registered_groups:
        if group.typer_instance is not None:
            _reflow_help(group.typer_instance)


_reflow_help(app)


def main() -> None:
    """The console entry of `python -m orchestrator.cli`."""
    app()


__all__ = ["app", "main"]
