"""The `pft` command-line application object; command modules register on it."""

import typer

app = typer.Typer(
    name="pft",
    help="pft-lab: partial fine-tuning of vision transformers (Ye et al., arXiv 2312.15681).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
