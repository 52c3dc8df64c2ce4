"""``python -m lra.leaderboard``: see the package docstring."""

from lra.leaderboard import main

main()
