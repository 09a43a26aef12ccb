"""Signing in and out, each person's landing page, and changing one's own password.

Sign-in is throttled per client address with growing delays, never locked per user
(`exchange.service.sessions`); a refused attempt is answered 429 with `Retry-After`.
"""

from __future__ import annotations

from aiohttp import web

from exchange.errors import Forbidden, InvalidInput, TooManyFailures, Unauthorized
from exchange.http.appkeys import SERVICE
from exchange.service.sessions import Sessions
from exchange.web.i18n import LANG_COOKIE, LANGUAGES, N_, set_language_cookie
from exchange.web.pages import redirect, render
from exchange.web.session import (
    CONSOLE_SETTINGS,
    SIGNIN_COOKIE,
    Session,
    check_signin_token,
    clear_session_cookie,
    client_address,
    find_session,
    posted_form,
    read_form,
    sessions,
    set_done,
    set_session_cookie,
    set_signin_cookie,
    signed_in,
    signin_token,
    spend_done,
    was_done,
)


def throttled_sessions(request: web.Request) -> Sessions:
    """The node's sessions, whose throttled sign-ins are audited within the node's refusal budget."""
    service = request.app[SERVICE]
    return Sessions(service.store, request.app[CONSOLE_SETTINGS], service.refusals)


LANDING = {"contact-point": "/console/channels", "auditor": "/console/audit", "admin": "/console/admin"}


def _next(target: str | None) -> str | None:
    """Only a path inside the console may be where sign-in leads, never another site."""
    if target and target.startswith("/console/") and not target.startswith("/console//") and "\\" not in target:
        return target
    return None


async def home(request: web.Request) -> web.StreamResponse:
    session = await find_session(request)
    if session is None:
        return redirect("/console/sign-in")
    return redirect(LANDING.get(session.user.role, "/console/peers"))


def _sign_in_form(request: web.Request, *, status: int = 200, error: str | None = None, name: str = "") -> web.Response:
    token = signin_token(request)
    response = render(
        request,
        "sign_in.html",
        status=status,
        signin_csrf=token,
        error=error,
        name=name,
        next=_next(request.query.get("next")) or "",
    )
    set_signin_cookie(response, token)
    return response


async def sign_in_page(request: web.Request) -> web.StreamResponse:
    if await find_session(request) is not None:
        return redirect("/console/")
    return _sign_in_form(request)


async def sign_in_post(request: web.Request) -> web.StreamResponse:
    await check_signin_token(request)
    form = await read_form(request)
    name, password = str(form.get("user", "")).strip()[:64], str(form.get("password", ""))
    try:
        session = await throttled_sessions(request).sign_in(name, password, client_address(request))
    except TooManyFailures as exc:
        response = _sign_in_form(request, status=429, error=exc.detail, name=name)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    except Unauthorized:
        return _sign_in_form(request, status=401, error=N_("Wrong user name or password."), name=name)
    except Forbidden as exc:  # a feed's user: TAXII and STIX exports only
        # Answered with the form, not raised, so audited here as the middleware audits what is
        # raised (found by a read-only review: a feed's refused sign-in was audited nowhere).
        await request.app[SERVICE].audit_rejection(
            method=request.method,
            path=request.path,
            status=403,
            reason=exc.audited,
            peer=None,
            user=name,
            address=client_address(request),
        )
        return _sign_in_form(request, status=403, error=N_("This user is a feed: it has no console."), name=name)
    target = _next(str(form.get("next", ""))) or LANDING.get(session.user.role, "/console/peers")
    response = redirect(target)
    set_session_cookie(response, session)
    response.del_cookie(SIGNIN_COOKIE, path="/")
    return response


async def sign_out(request: web.Request) -> web.StreamResponse:
    session, _ = await posted_form(request)
    await sessions(request).close(session, client_address(request))
    response = redirect("/console/sign-in")
    clear_session_cookie(response)
    return response


CHANGED_DONE = "changed"  # the account page says "Your password is changed" (`set_done`)


def _account(request: web.Request, session: Session, *, status: int = 200, error: str | None = None) -> web.Response:
    chosen = request.cookies.get(LANG_COOKIE)
    done = error is None and was_done(request, CHANGED_DONE)
    response = render(
        request,
        "account.html",
        status=status,
        session=session,
        error=error,
        done=done,
        language_saved=request.query.get("language") == "1",
        chosen_language=chosen if chosen in LANGUAGES else "",
    )
    if done:
        spend_done(response)  # said once
    return response


async def account_page(request: web.Request) -> web.StreamResponse:
    session = await signed_in(request)
    return _account(request, session)


async def choose_language(request: web.Request) -> web.StreamResponse:
    """A person chooses the console's language, or goes back to the browser's (an empty choice).

    Kept in a cookie of this browser for now, not with the user: no column holds it yet."""
    _, form = await posted_form(request)
    chosen = form.get("language", "")
    if chosen and chosen not in LANGUAGES:
        raise InvalidInput(N_("choose one of the languages offered"))
    response = redirect("/console/account?language=1")
    set_language_cookie(response, chosen or None)
    return response


async def change_password(request: web.Request) -> web.StreamResponse:
    """A person changes their own password: the current one is checked under the sign-in limits."""
    session, form = await posted_form(request)
    new, again = form.get("new", ""), form.get("again", "")
    error = None
    if new != again:
        error = N_("The two new passwords differ.")
    else:
        try:
            await throttled_sessions(request).change_own_password(
                session, form.get("current", ""), new, client_address(request)
            )
        except TooManyFailures as exc:
            error = exc.detail
        except Unauthorized:
            error = N_("Your current password is not that.")
        except InvalidInput as exc:
            error = exc.detail[:1].upper() + exc.detail[1:] + "."
    if error is not None:
        return _account(request, session, status=422, error=error)
    response = redirect("/console/account")
    set_done(response, CHANGED_DONE)
    return response


def routes(prefix: str) -> list[web.RouteDef]:
    return [
        web.get(prefix + "/", home),
        web.get(prefix + "/sign-in", sign_in_page),
        web.post(prefix + "/sign-in", sign_in_post),
        web.post(prefix + "/sign-out", sign_out),
        web.get(prefix + "/account", account_page),
        web.post(prefix + "/account/password", change_password),
        web.post(prefix + "/account/language", choose_language),
    ]
