"""Where the API token comes from: the settings, or a Prefect Secret block they name."""

from __future__ import annotations

from pydantic import SecretStr

from modelset._exceptions import MissingTokenError
from modelset.hidream import HiDreamClient
from modelset.settings import Settings


async def resolve_token(settings: Settings) -> SecretStr:
    """``HIDREAM_API_TOKEN``, else the Secret block ``HIDREAM_API_TOKEN_BLOCK`` names."""
    if settings.api_token is not None and settings.api_token.get_secret_value():
        return settings.api_token
    if settings.api_token_block:
        from prefect.blocks.system import Secret

        secret: Secret[str] = await Secret.aload(settings.api_token_block)
        return SecretStr(str(secret.get()))
    raise MissingTokenError()


async def client_from_settings(settings: Settings) -> HiDreamClient:
    """An API client configured from the settings, with the token resolved."""
    return HiDreamClient.from_settings(settings, token=await resolve_token(settings))
