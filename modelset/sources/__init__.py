"""Input discovery and fetching: what the user pointed at, turned into local, hashed files.

Core layer: plain Python, no Prefect.
"""

from modelset.sources._exceptions import FetchError, NoImagesFound, SourceError, UnsafeURLError
from modelset.sources.discovery import discover
from modelset.sources.fetching import fetch, remote_identity
from modelset.sources.locations import IMAGE_SUFFIXES
from modelset.sources.models import FetchedFile, PassedOver, SourceItem
from modelset.sources.netguard import ALLOW_PRIVATE_ENV, check_url
from modelset.sources.urls import redact_url

__all__ = [
    "ALLOW_PRIVATE_ENV",
    "IMAGE_SUFFIXES",
    "FetchError",
    "FetchedFile",
    "NoImagesFound",
    "PassedOver",
    "SourceError",
    "SourceItem",
    "UnsafeURLError",
    "check_url",
    "discover",
    "fetch",
    "redact_url",
    "remote_identity",
]
