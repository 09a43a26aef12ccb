"""What the CLI prints: rich consoles, text from elsewhere shown literally, and every expected
failure as one `error:` line, exit 1.

`main()` (exchange.cli.main) runs the whole command line inside `one_line_errors`, so no
ExchangeError, timeout, unreachable node or unreadable file ever ends in a traceback. Click's
own usage errors are click's to print (exit 2); anything else is a bug and keeps its traceback.

Text that a partner wrote (a bulletin's title, body and indicators, a channel's title, a node's
name, an error a partner sent) or that comes from any file or answer rather than from the person
at this terminal goes through `plain`, `literal` or `cell` before it is printed: a terminal acts
on control characters (an ESC sequence can clear the screen, move the cursor to overwrite lines
or make a hyperlink) and rich acts on its markup (`[link=...]`), so either would let a remote
author change what an officer sees.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, NoReturn, TypeVar

import aiohttp
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from exchange.errors import ExchangeError

F = TypeVar("F", bound=Callable[..., Any])

# Piped output keeps whole ids and names rather than folding them to 80 columns. No :emoji: codes:
# a title's ":warning:" is shown as written.
console = Console(width=None if sys.stdout.isatty() else 200, emoji=False)
err_console = Console(stderr=True, emoji=False)

# What a terminal acts on instead of showing, or what reorders or breaks the line it is on: C0
# controls, DEL and C1 controls (CSI is 0x9b), the direction controls (ALM, LRM, RLM, LRE RLE PDF
# LRO RLO, LRI RLI FSI PDI: a terminal cannot isolate them as the console's <bdi> does), the line
# and paragraph separators, and lone surrogates (which no terminal encoding can write).
CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029\ud800-\udfff]")
# The same but newline and tab, which a bulletin's body legitimately holds.
CONTROLS_BUT_LINES = re.compile(CONTROLS.pattern.replace("\x00-\x1f", "\x00-\x08\x0b-\x1f"))


def _visible(match: re.Match[str]) -> str:
    code = ord(match[0])
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def plain(value: object, lines: bool = False) -> str:
    """`value` as text a terminal shows as it is: each control character written out as an escape
    (ESC as the four characters `\\x1b`), so the reader sees that it was there and nothing acts on
    it. On one line unless `lines` (a bulletin's body), which keeps newlines and tabs. For
    click.echo; with rich, use `literal` or `cell`."""
    return (CONTROLS_BUT_LINES if lines else CONTROLS).sub(_visible, str(value))


def literal(value: object, lines: bool = False) -> str:
    """`plain(value)` with rich markup escaped, to put into a string that rich prints with markup."""
    return escape(plain(value, lines))


def cell(value: object) -> Text:
    """`value` as a table cell that rich shows as it is (a Text is never read as markup)."""
    return Text(plain(value))


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
    err_console.print(f"[red]error:[/red] {literal(message)}", highlight=False, soft_wrap=True)
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
