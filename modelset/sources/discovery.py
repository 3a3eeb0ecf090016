"""Expand what the user pointed at (files, folders, globs, URLs, manifests) into photos."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import httpx

from modelset.sources.errors import SourceError, redact_url, url_scheme
from modelset.sources.locations import (
    HTTP_SCHEMES,
    IMAGE_SUFFIXES,
    file_url_path,
    is_image_name,
    is_object_store,
    open_filesystem,
    unsupported_scheme,
)
from modelset.sources.manifest import MANIFEST_SUFFIXES, is_manifest, read_manifest
from modelset.sources.models import SourceItem

_GLOB_CHARS = frozenset("*?[")


def discover(specs: Iterable[str], *, allow_file_urls: bool = False) -> list[SourceItem]:
    """Expand each spec into photos, keeping the given order (each expansion sorted).

    A spec is an image file, a folder (recursive, hidden entries skipped), a glob (``**``
    allowed), an http(s) URL, a ``.csv``/``.jsonl`` manifest, or an object-store URL (a
    prefix or a single object). Sources repeated verbatim are kept once, first wins.
    ``allow_file_urls`` lets manifest rows use ``file://`` URLs.

    Raises SourceError if a spec does not exist, matches no image, or is malformed.
    """
    items: list[SourceItem] = []
    seen: set[str] = set()
    for spec in specs:
        for item in _expand(spec, allow_file_urls=allow_file_urls):
            if item.source not in seen:
                seen.add(item.source)
                items.append(item)
    return items


def _expand(spec: str, *, allow_file_urls: bool) -> list[SourceItem]:
    if not spec.strip():
        raise SourceError("empty source (expected a path, glob, manifest or URL)")
    scheme = url_scheme(spec)
    if scheme is None:
        return _expand_local(spec, Path(os.path.expanduser(spec)), allow_file_urls)
    if scheme in HTTP_SCHEMES:
        return [SourceItem(source=_checked_http_url(spec), origin=redact_url(spec))]
    if scheme == "file":
        # Typed by the user, so allowed; ``allow_file_urls`` only governs manifest rows.
        return _expand_local(spec, file_url_path(spec), allow_file_urls)
    if is_object_store(scheme):
        return _expand_object_store(spec)
    raise unsupported_scheme(spec)


def _expand_local(spec: str, path: Path, allow_file_urls: bool) -> list[SourceItem]:
    if path.is_file():
        if is_manifest(path):
            return read_manifest(path, allow_file_urls=allow_file_urls)
        if not is_image_name(path.name):
            raise SourceError(
                f"{spec} is neither an image ({_suffix_list()}) nor a manifest "
                f"({', '.join(sorted(MANIFEST_SUFFIXES))})"
            )
        return [SourceItem(source=os.path.abspath(path), origin=spec)]
    if path.is_dir():
        sources = _walk_images(Path(os.path.abspath(path)))
    elif _GLOB_CHARS & set(str(path)):
        sources = _glob_images(str(path))
    else:
        raise SourceError(f"{spec} does not exist")
    if not sources:
        raise SourceError(f"no images found in {spec}")
    return [SourceItem(source=source, origin=spec) for source in sources]


def _walk_images(root: Path) -> list[str]:
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(
            os.path.join(dirpath, name)
            for name in filenames
            if not name.startswith(".") and is_image_name(name)
        )
    return sorted(found, key=_path_key)


def _glob_images(pattern: str) -> list[str]:
    # glob skips hidden files and folders unless the pattern names them explicitly.
    matches = glob.glob(pattern, recursive=True)
    images = {os.path.abspath(m) for m in matches if is_image_name(m) and os.path.isfile(m)}
    return sorted(images, key=_path_key)


def _path_key(path: str) -> tuple[str, ...]:
    # Compare component by component so "a/b.jpg" and "a.jpg" sort like a file browser would.
    return Path(path).parts


def _checked_http_url(url: str) -> str:
    try:
        host = httpx.URL(url).host
    except httpx.InvalidURL as exc:
        raise SourceError(f"invalid URL {redact_url(url)}: {exc}") from exc
    if not host:
        raise SourceError(f"invalid URL {redact_url(url)}: no host")
    return url


def _expand_object_store(spec: str) -> list[SourceItem]:
    fs, path = open_filesystem(spec)
    origin = redact_url(spec)
    try:
        if _GLOB_CHARS & set(path):
            keys = [k for k in fs.glob(path) if fs.isfile(k)]
            root = _glob_root(path)
        elif fs.isdir(path):
            keys, root = list(fs.find(path)), path
        elif fs.isfile(path):
            if not is_image_name(path):
                raise SourceError(f"{origin} is not an image ({_suffix_list()})")
            return [SourceItem(source=spec, origin=origin)]
        else:
            raise SourceError(f"{origin} does not exist")
    except SourceError:
        raise
    except Exception as exc:  # backends raise their own types (botocore, google.auth, ...)
        raise SourceError(f"cannot list {origin}: {exc}") from exc
    sources = _object_sources(spec, keys, root)
    if not sources:
        raise SourceError(f"no images found in {origin}")
    return [SourceItem(source=source, origin=origin) for source in sources]


def _glob_root(pattern: str) -> str:
    first_glob_char = min(pattern.index(c) for c in _GLOB_CHARS if c in pattern)
    return pattern[:first_glob_char].rpartition("/")[0]


def _object_sources(spec: str, keys: list[str], root: str) -> list[str]:
    """Image keys not hidden below ``root``, sorted, as URLs in the scheme the user wrote."""
    images = []
    for key in map(str, keys):
        below = key[len(root) :] if key.startswith(root) else key
        if is_image_name(key) and not any(p.startswith(".") for p in below.split("/")):
            images.append(key)
    images.sort(key=lambda key: PurePosixPath(key).parts)
    # Rebuild URLs the way users write them ("memory://bucket/x", not "memory:///bucket/x").
    scheme = url_scheme(spec)
    return [f"{scheme}://{key.lstrip('/')}" for key in images]


def _suffix_list() -> str:
    return ", ".join(sorted(IMAGE_SUFFIXES))
