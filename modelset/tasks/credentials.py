"""The API token under Prefect: the settings', or the Secret block they name.

Prefect is imported only when a block is read: the CLI asks for the catalogue with a
client from here while Prefect is still being imported in another thread.
"""

from __future__ import annotations

from pydantic import SecretStr

from modelset import credentials
from modelset.hidream import HiDreamClient
from modelset.settings import Settings


async def read_secret_block(name: str) -> SecretStr:
    """The value of the Prefect Secret block ``name``."""
    from prefect.blocks.system import Secret

    secret: Secret[str] = await Secret.aload(name)
    return SecretStr(str(secret.get()))


async def resolve_token(settings: Settings) -> SecretStr:
    """``HIDREAM_API_TOKEN``, else the Secret block ``HIDREAM_API_TOKEN_BLOCK`` names."""
    return await credentials.resolve_token(settings, read_secret_block)


async def client_from_settings(settings: Settings) -> HiDreamClient:
    """An API client configured from the settings, with the token resolved."""
    return await credentials.client_from_settings(settings, read_secret_block)
