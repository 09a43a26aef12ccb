"""The CLI against a node that answers garbage (found by a read-only review): an error answer
whose JSON is not an object, and a success answer of the wrong shape, ended in tracebacks; now
one `error:` line and exit 1. The node's TLS identity is served by a stand-in on its port."""

from __future__ import annotations

import asyncio

from aiohttp import web
from click.testing import CliRunner, Result

from exchange.cli.main import cli
from tests.conftest import Federation, MakeFederation, Member
from tests.standin import StandIn


async def exchange(fed: Federation, *args: str, node: str = "nl-customs") -> Result:
    argv = [args[0], "--node", str(fed.folder / f"{node}.toml"), *args[1:]]
    return await asyncio.to_thread(CliRunner().invoke, cli, argv)


def no_traceback(result: Result) -> None:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), f"traceback: {result.exc_info!r}"
    assert result.output.startswith("error:") and result.output.count("\n") == 1, result.output


class Garbage(StandIn):
    """Stands in for the node's client API with its TLS identity and answers `body` with `status`."""

    def __init__(self, member: Member, status: int, body: bytes) -> None:
        super().__init__(member)
        self.status, self.body = status, body

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        return web.Response(status=self.status, body=self.body, content_type="application/json")


async def test_an_error_answer_whose_body_is_not_an_object_is_one_line(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    await fed.stop("nl-customs")
    async with Garbage(fed["nl-customs"], 500, b"[1]"):
        no_traceback(await exchange(fed, "peers"))


async def test_a_success_answer_of_the_wrong_shape_is_one_line(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    await fed.stop("nl-customs")
    async with Garbage(fed["nl-customs"], 200, b"{}"):
        no_traceback(await exchange(fed, "read", "ab" * 32))
