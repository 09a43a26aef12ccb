"""What a partner writes is shown literally on the command line (found by a read-only review):
a bulletin authored at a partner node whose title, body and company name hold terminal escape
sequences (a hyperlink, clear screen) and rich markup (`[bold red]`, `[link=...]`) is listed by
`exchange inbox`, shown by `exchange read` and followed by `exchange inbox --follow` at another
node without one ESC byte reaching the terminal, and with the brackets as they were written."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys

from click.testing import CliRunner, Result

from exchange.cli.main import cli
from tests.conftest import Federation, MakeFederation, eventually

HYPERLINK = "\x1b]8;;http://evil\x1b\\"  # OSC 8: what follows is a link to http://evil
CLEAR = "\x1b[2J"  # clear the screen
MARKUP = "[bold red]x[/]"
LINK = "[link=http://x]y[/link]"
TITLE = f"Seizure {HYPERLINK}{CLEAR}{MARKUP} {LINK} \u202eexe.pdf"
BODY = f"First line {MARKUP}\n\tindented {LINK}\r{CLEAR}overwritten\x9b2J"
COMPANY = f"Acme {LINK}{CLEAR}"


async def exchange(fed: Federation, *args: str, node: str = "nl-customs") -> Result:
    argv = [args[0], "--node", str(fed.folder / f"{node}.toml"), *args[1:]]
    return await asyncio.to_thread(CliRunner().invoke, cli, argv)


def shown_literally(output: str) -> None:
    assert "\x1b" not in output and "\x9b" not in output and "\u202e" not in output, repr(output)
    assert MARKUP in output and LINK in output  # the brackets as written, not rich's markup
    assert "\\x1b]8;;http://evil\\x1b\\" in output and "\\x1b[2J" in output  # shown, not acted on
    assert "\\u202eexe.pdf" in output


async def by_partner(fed: Federation) -> str:
    """A bulletin authored at ke-customs, as received at nl-customs."""
    body = {"kind": "alert", "title": TITLE, "body": BODY, "indicators": {"companies": [COMPANY]}}
    status, posted, _ = await fed["ke-customs"].api("POST", "/api/v1/channels/c2c/bulletins", body=body)
    assert status == 201, posted
    bid = str(posted["id"])

    async def arrived() -> bool:
        return (await fed["nl-customs"].api("GET", f"/api/v1/bulletins/{bid}"))[0] == 200

    await eventually(arrived, what="the bulletin at nl-customs")
    return bid


async def test_inbox_and_read_show_a_partners_text_literally(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    bid = await by_partner(fed)

    listed = await exchange(fed, "inbox")
    assert listed.exit_code == 0, listed.output
    assert "\x1b" not in listed.stdout and "[bold red]" in listed.stdout, repr(listed.stdout)

    read = await exchange(fed, "read", bid)
    assert read.exit_code == 0, read.output
    shown_literally(read.stdout)
    assert "\\x0d\\x1b[2Joverwritten\\x9b2J" in read.stdout  # no carriage return, no C1 CSI
    assert "First line [bold red]x[/]\n        indented" in read.stdout  # its lines and tab (as spaces)
    assert f"companies: Acme {LINK}\\x1b[2J" in read.stdout


async def test_inbox_follow_shows_a_partners_text_literally(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    follower = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "exchange.cli", "inbox", "--follow", "--after", "0"),
        *("--node", str(fed.folder / "nl-customs.toml")),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        # Ctrl-C's SIGINT not ignored, as at a terminal (tests/service/test_follow.py says why).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        await by_partner(fed)
        assert follower.stdout is not None
        line = (await asyncio.wait_for(follower.stdout.readline(), 60)).decode()
    finally:
        with contextlib.suppress(ProcessLookupError):
            follower.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(follower.wait(), 30)
        except TimeoutError:
            follower.kill()
            await follower.wait()
            raise AssertionError("inbox --follow went on after SIGINT") from None
    assert line.count("\n") == 1  # one bulletin, one line
    shown_literally(line)


def test_the_helpers_leave_ordinary_text_alone() -> None:
    from exchange.cli.output import cell, literal, plain

    text = "Ordinary title: 1 000 kg, Åland → NBO, مرحبا"
    assert plain(text) == literal(text) == cell(text).plain == text
    assert plain("a\nb\tc") == "a\\x0ab\\x09c"  # one line: a title cannot forge the next line
    assert plain("a\nb\tc", lines=True) == "a\nb\tc"
    assert plain("\ud800\u2028\u0085") == "\\ud800\\u2028\\x85"
