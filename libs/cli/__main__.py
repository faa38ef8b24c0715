"""``python -m libs.cli``: the `lathe` command without the installed entry point."""

from libs.cli.main import main

main()
