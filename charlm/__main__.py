"""python -m charlm → the command line."""

from charlm.cli import app

app(prog_name="charlm")
