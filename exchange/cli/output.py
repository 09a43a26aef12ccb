"""What the CLI prints: rich consoles, and every expected failure as one `error:` line, exit 1.

`main()` (exchange.cli.main) runs the whole command line inside `one_line_errors`, so no
ExchangeError, timeout, unreachable node or unreadable file ever ends in a traceback. Click's
own usage errors are click's to print (exit 2); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, NoReturn, TypeVar

import aiohttp
from rich.console import Console
from rich.markup import escape

from exchange.errors import ExchangeError

F = TypeVar("F", bound=Callable[..., Any])

# Piped output keeps whole ids and names rather than folding them to 80 columns.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)

# What a user can cause or meet: a refusal, a node that is down or hangs, a file that is not there.
EXPECTED: tuple[type[BaseException], ...] = (ExchangeError, TimeoutError, aiohttp.ClientError, OSError)


def describe(exc: BaseException) -> str:
    """The message of an expected failure, on one line."""
    if isinstance(exc, ExchangeError):
        text = exc.detail
    elif isinstance(exc, TimeoutError):  # asyncio.TimeoutError too
        text = f"timed out{': ' + str(exc) if str(exc) else ''}"
    elif isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        text = f"{exc.filename}: {exc.strerror.lower()}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def fail(message: str) -> NoReturn:
    """Print `error: message` as one line on stderr (never folded) and exit 1."""
    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(1)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn any expected failure raised inside into one `error:` line and exit status 1."""
    try:
        yield
    except EXPECTED as exc:
        fail(describe(exc))
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        # What a command reads from a node's answer that does not have the shape it should (a
        # node of another release, or a hostile one): one line too, never a traceback.
        fail(f"an answer could not be read as this command expects it ({type(exc).__name__}: {describe(exc)})")


def user_errors(fn: F) -> F:
    """The same as `one_line_errors`, for a command run without `main()` (click's CliRunner)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with one_line_errors():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
