"""Placeholder until its issue lands."""
HELP = "(not built yet)"


def add_arguments(parser):
    pass


def run(args):
    print("cmirl: this command is not built yet")
    return 1
