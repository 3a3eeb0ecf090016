"""The API token under Prefect: the settings', or the Secret block they name."""

from __future__ import annotations

from prefect.blocks.system import Secret
from pydantic import SecretStr

from modelset.batch import client_from_settings as client_with
from modelset.batch import resolve_token as resolve_token_with
from modelset.hidream import HiDreamClient
from modelset.settings import Settings


async def read_secret_block(name: str) -> SecretStr:
    """The value of the Prefect Secret block ``name``."""
    secret: Secret[str] = await Secret.aload(name)
    return SecretStr(str(secret.get()))


async def resolve_token(settings: Settings) -> SecretStr:
    """``HIDREAM_API_TOKEN``, else the Secret block ``HIDREAM_API_TOKEN_BLOCK`` names."""
    return await resolve_token_with(settings, read_secret_block)


async def client_from_settings(settings: Settings) -> HiDreamClient:
    """An API client configured from the settings, with the token resolved."""
    return await client_with(settings, read_secret_block)
