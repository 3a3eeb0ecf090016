"""Check 5: the callback receiver answers, and knows the secret the runs send."""

from __future__ import annotations

from typing import Any

import httpx

from modelset.doctor.result import HTTP_TIMEOUT_S, CheckResult, first_line
from modelset.settings import Settings

NAME = "callback"
RECEIVER_HEALTH_PATH = "/healthz"  # modelset.deployments.callbacks' health route


async def check_callback(settings: Settings) -> CheckResult:
    """The receiver at HIDREAM_CALLBACK_URL answers its health route and knows the
    secret. The secret is tested with a GET of the callback route, which the receiver
    answers 405 when the secret matches and 404 when not; nothing is delivered."""
    if not settings.callback_url:
        return CheckResult(
            NAME,
            True,
            "HIDREAM_CALLBACK_URL is not set: runs poll for results (no callbacks)",
            skipped=True,
        )
    base = settings.callback_url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        return CheckResult(
            NAME,
            False,
            f"HIDREAM_CALLBACK_URL={base} is not an http(s) URL",
            hint="set it to the receiver's public base URL, e.g. https://hooks.example.com",
        )
    route = await _callback_route(base, settings.notify_url())
    if isinstance(route, CheckResult):
        return route
    return _secret_known(base, route.status_code, settings)


async def _callback_route(base: str, notify_url: str | None) -> httpx.Response | CheckResult:
    """The receiver's answer to a GET of the callback route, once its health route said it
    is the receiver; else the failed check."""
    try:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, follow_redirects=False) as http:
            health = await http.get(f"{base}{RECEIVER_HEALTH_PATH}")
            answer = _json_or_none(health)
            if health.status_code != 200 or not (
                isinstance(answer, dict) and answer.get("ok") is True
            ):
                return CheckResult(
                    NAME,
                    False,
                    f"{base}{RECEIVER_HEALTH_PATH} answered HTTP {health.status_code}, not "
                    "the modelset receiver's health",
                    hint="point HIDREAM_CALLBACK_URL at the receiver (modelset callbacks)",
                )
            if notify_url is None:
                return CheckResult(
                    NAME,
                    False,
                    f"the receiver at {base} answers, but HIDREAM_CALLBACK_SECRET is not set",
                    hint="set HIDREAM_CALLBACK_SECRET to the receiver's secret",
                )
            return await http.get(notify_url)
    except httpx.HTTPError as exc:
        return CheckResult(
            NAME,
            False,
            f"the receiver at {base} does not answer: {first_line(exc)}",
            hint="start it (modelset callbacks) where HIDREAM_CALLBACK_URL points",
        )


def _secret_known(base: str, status: int, settings: Settings) -> CheckResult:
    """What the callback route's ``status`` says of the secret: 405 (a GET of a POST
    route) when the receiver knows it, 404 when not; and whether it is long enough."""
    from modelset.deployments.callbacks import MIN_SECRET_CHARS

    secret = settings.callback_secret.get_secret_value() if settings.callback_secret else ""
    short = (
        f"; the secret has fewer than {MIN_SECRET_CHARS} characters: use a long random one"
        if len(secret) < MIN_SECRET_CHARS
        else ""
    )
    if status == 404:
        return CheckResult(
            NAME,
            False,
            f"the receiver at {base} answers but does not know this HIDREAM_CALLBACK_SECRET: "
            "every callback would be refused",
            hint="give the runs and the receiver the same HIDREAM_CALLBACK_SECRET",
        )
    if status != 405:
        return CheckResult(
            NAME,
            False,
            f"the receiver at {base} answers; its callback route answered HTTP "
            f"{status}, so the secret could not be confirmed",
            hint="check what is in front of the receiver" + short,
            needed=False,
        )
    return CheckResult(
        NAME,
        not short,
        f"the receiver at {base} answers and knows the secret",
        hint=short.removeprefix("; "),
        needed=not short,
    )


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
