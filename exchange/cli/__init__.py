"""The `exchange` command line."""


def main() -> None:
    """The installed `exchange` script's entry point, which imports the command line only when run.

    A node's crypto workers are started with `spawn`, which runs the main script again in each
    worker (as `__mp_main__`, its `__name__ == "__main__"` part skipped). The script imports its
    entry point's module: were that `exchange.cli.main`, every worker would load the whole command
    line and, through it, the database and web code (about 40 MB a worker) that it never uses.
    """
    from exchange.cli.main import main as run

    run()
