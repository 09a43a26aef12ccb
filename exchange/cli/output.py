"""What the CLI prints: rich consoles, and user errors as one line with exit status 1."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from rich.console import Console

from exchange.errors import ExchangeError

F = TypeVar("F", bound=Callable[..., Any])

# Piped output keeps whole ids and names rather than folding them to 80 columns.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)


def user_errors(fn: F) -> F:
    """Print an ExchangeError as one line and exit 1, instead of a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ExchangeError as exc:
            err_console.print(f"[red]error:[/red] {exc.detail}", highlight=False)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]
