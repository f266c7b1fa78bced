"""python -m charlm → the command line."""

from charlm.cli import main

main()
