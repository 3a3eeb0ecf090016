"""Expand what the user pointed at (files, folders, globs, URLs, manifests) into photos."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import httpx

from modelset.sources.errors import NoImagesFound, SourceError, redact_url, url_scheme
from modelset.sources.locations import (
    HTTP_SCHEMES,
    IMAGE_SUFFIXES,
    file_url_path,
    is_image_name,
    is_object_store,
    open_bucket,
    unsupported_scheme,
)
from modelset.sources.manifest import (
    MANIFEST_SUFFIXES,
    is_manifest,
    parse_manifest,
    read_manifest,
)
from modelset.sources.models import SourceItem
from modelset.storage import BucketStore, NotFound, StorageError

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
        raise NoImagesFound(f"no images found in {spec}")
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
    """A prefix (listed recursively), a glob over keys, or one object, in that order."""
    store, path = open_bucket(spec)
    origin = redact_url(spec)
    try:
        if os.path.splitext(path)[1].lower() in MANIFEST_SUFFIXES:
            return _bucket_manifest(store, path, spec, origin)
        if _GLOB_CHARS & set(path):
            root = _glob_root(path)
            pattern = _glob_pattern(path)
            keys = [key for key in store.list(root) if pattern.fullmatch(key)]
        else:
            keys, root = store.list(path), path
            if not keys and path:  # not a prefix: perhaps one object
                store.head(path)
                if not is_image_name(path):
                    raise SourceError(f"{origin} is not an image ({_suffix_list()})")
                return [SourceItem(source=spec, origin=origin)]
    except NotFound:
        raise SourceError(f"{origin} does not exist") from None
    except ValueError:  # a key with empty, "." or ".." segments
        raise SourceError(f"{origin} is not a valid object key") from None
    except StorageError as exc:
        raise SourceError(f"cannot list {origin}: {exc}") from exc
    sources = _object_sources(store.url, keys, root)
    if not sources:
        raise NoImagesFound(f"no images found in {origin}")
    return [SourceItem(source=source, origin=origin) for source in sources]


def _bucket_manifest(store: BucketStore, key: str, spec: str, origin: str) -> list[SourceItem]:
    """A manifest kept in a bucket (e.g. a sharded run's): relative images are keys next
    to it; file:// rows are never allowed."""
    try:
        text = store.read(key).data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SourceError(f"{origin}: manifest is not UTF-8 text ({exc.reason})") from exc
    return parse_manifest(text, name=origin, base=spec.rpartition("/")[0])


def _glob_root(pattern: str) -> str:
    """The prefix before the first segment with a glob character: where to list."""
    first_glob_char = min(pattern.index(c) for c in _GLOB_CHARS if c in pattern)
    return pattern[:first_glob_char].rpartition("/")[0]


def _glob_pattern(pattern: str) -> re.Pattern[str]:
    """A key glob as a regex: ``*`` and ``?`` stay within a segment, ``**`` spans any
    (``a/**/*.jpg`` matches ``a/x.jpg`` and ``a/b/c/x.jpg``), ``[...]`` is a class."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif char == "*":
            out.append("[^/]*")
            i += 1
        elif char == "?":
            out.append("[^/]")
            i += 1
        elif char == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end].replace("\\", "\\\\")
            if body.startswith("!"):  # never matches "/", like a class in a path glob
                body = "^/" + body[1:]
            elif body.startswith(("^", "[")):
                body = "\\" + body
            out.append(f"[{body}]")
            i = end + 1
        else:
            out.append(re.escape(char))
            i += 1
    return re.compile("".join(out))


def _object_sources(bucket_url: str, keys: list[str], root: str) -> list[str]:
    """Image keys not hidden below ``root``, sorted, as URLs in the scheme the user wrote."""
    images = []
    for key in keys:
        below = key[len(root) :] if key.startswith(root) else key
        if is_image_name(key) and not any(p.startswith(".") for p in below.split("/")):
            images.append(key)
    images.sort(key=lambda key: PurePosixPath(key).parts)
    return [f"{bucket_url}/{key}" for key in images]


def _suffix_list() -> str:
    return ", ".join(sorted(IMAGE_SUFFIXES))
