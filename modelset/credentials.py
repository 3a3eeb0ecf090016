"""Where the API token comes from: the settings, or a secret they name, read by whoever
can (under Prefect, a Secret block: ``modelset.tasks.credentials``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from pydantic import SecretStr

from modelset._exceptions import MissingTokenError
from modelset.hidream import HiDreamClient
from modelset.settings import Settings

SecretReader = Callable[[str], Awaitable[SecretStr]]
"""Reads the secret stored under a name (``HIDREAM_API_TOKEN_BLOCK``)."""


async def resolve_token(settings: Settings, secret: SecretReader) -> SecretStr:
    """``HIDREAM_API_TOKEN``, else the secret ``HIDREAM_API_TOKEN_BLOCK`` names."""
    if settings.api_token is not None and settings.api_token.get_secret_value():
        return settings.api_token
    if settings.api_token_block:
        return await secret(settings.api_token_block)
    raise MissingTokenError()


async def client_from_settings(settings: Settings, secret: SecretReader) -> HiDreamClient:
    """An API client configured from the settings, with the token resolved."""
    return HiDreamClient.from_settings(settings, token=await resolve_token(settings, secret))
