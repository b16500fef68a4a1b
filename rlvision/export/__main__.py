"""``python -m rlvision.export``: the ``rlvision export`` command."""

from rlvision.commands.export import main

main()
