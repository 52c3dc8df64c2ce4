"""``python -m lra.leaderboard``: see ``lra.leaderboard.cli``."""

from lra.leaderboard.cli import main

main()
