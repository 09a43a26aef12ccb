"""The audit entries of a node's local users and of its console's sign-ins: their kinds and
typed models, kept here so that `exchange.audit.events`, which re-exports them and lists them with
every other kind, stays one readable module. Pure: no I/O.
"""

from __future__ import annotations

from typing import Final, Literal, NotRequired, TypedDict

USER_CREATED: Final = "user.created"
USER_TOKEN_ROTATED: Final = "user.token_rotated"  # noqa: S105 (a kind name, not a secret)
USER_PASSWORD_SET: Final = "user.password_set"  # noqa: S105 (a kind name, not a secret)
USER_ASSIGNED: Final = "user.assigned"
USER_UNASSIGNED: Final = "user.unassigned"
USER_DISABLED: Final = "user.disabled"
USER_ENABLED: Final = "user.enabled"
CONSOLE_SIGNED_IN: Final = "console.signed_in"
CONSOLE_SIGNED_OUT: Final = "console.signed_out"
CONSOLE_SIGNIN_FAILED: Final = "console.signin_failed"
CONSOLE_SIGNIN_THROTTLED: Final = "console.signin_throttled"


class UserCreated(TypedDict):
    event: Literal["user.created"]
    at: str
    user: str
    role: str
    actor: str


class UserTokenRotated(TypedDict):
    event: Literal["user.token_rotated"]
    at: str
    user: str
    actor: str


class UserPasswordSet(TypedDict):
    event: Literal["user.password_set"]
    at: str
    user: str
    actor: str


class UserAssigned(TypedDict):
    event: Literal["user.assigned"]
    at: str
    user: str
    channel: str
    actor: str


class UserUnassigned(TypedDict):
    event: Literal["user.unassigned"]
    at: str
    user: str
    channel: str
    actor: str


class UserDisabled(TypedDict):
    """An administrator disabled a user: its token was replaced by one never shown, its console
    password deleted and its console sessions ended, in the same transaction."""

    event: Literal["user.disabled"]
    at: str
    user: str
    actor: str


class UserEnabled(TypedDict):
    """An administrator enabled a disabled user again, with a new token (shown to them once) and
    no console password until one is set (`user.password_set`)."""

    event: Literal["user.enabled"]
    at: str
    user: str
    actor: str


class ConsoleSignedIn(TypedDict):
    event: Literal["console.signed_in"]
    at: str
    user: str
    address: str


class ConsoleSignedOut(TypedDict):
    event: Literal["console.signed_out"]
    at: str
    user: str
    address: str


class ConsoleSigninFailed(TypedDict):
    """A failed sign-in. A name that is no user may be a password typed in the wrong field: not logged."""

    event: Literal["console.signin_failed"]
    at: str
    address: str
    user: NotRequired[str]  # the name, when it is a user's
    unknown_user: NotRequired[Literal[True]]  # otherwise


class ConsoleSigninThrottled(TypedDict):
    event: Literal["console.signin_throttled"]
    at: str
    limit: Literal["user", "address"]
    address: str
    user: NotRequired[str]  # the name, when it is a user's
