"""Expand what the user pointed at (files, folders, globs, URLs, manifests) into photos."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path, PurePosixPath

import httpx

from modelset import layout
from modelset.signatures import SIGNATURE_BYTES, image_format
from modelset.sources._exceptions import NoImagesFound, SourceError
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
from modelset.sources.models import (
    HIDDEN,
    NOT_AN_IMAGE,
    RAW_CAMERA_FILE,
    PassedOver,
    SourceItem,
)
from modelset.sources.urls import redact_url, url_scheme
from modelset.storage import BucketStore, NotFound, StorageError

_GLOB_CHARS = frozenset("*?[")
# Checked before a file's bytes: most of these start like a TIFF, and what Pillow would
# read of them is the small preview the camera embeds, not the photo.
RAW_SUFFIXES = frozenset(
    {".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".orf", ".rw2"}
    | {".raf", ".pef", ".srw", ".x3f", ".3fr", ".iiq", ".erf", ".kdc", ".mrw", ".rwl", ".raw"}
)
_SNIFFING_THREADS = 16


def discover(
    specs: Iterable[str],
    *,
    allow_file_urls: bool = False,
    passed_over: PassedOver | None = None,
) -> list[SourceItem]:
    """Expand each spec into photos, keeping the given order (each expansion sorted).

    A spec is an image file, a folder (recursive, hidden entries skipped), a glob (``**``
    allowed), an http(s) URL, a ``.csv``/``.jsonl`` manifest, or an object-store URL (a
    prefix or a single object). A file is an image by its suffix or, without an image
    suffix, by its first bytes; a RAW camera file never is. Sources repeated verbatim are
    kept once, first wins. ``allow_file_urls`` lets manifest rows use ``file://`` URLs.
    ``passed_over`` collects the files that folders, globs and prefixes held but that
    are not taken, by reason.

    Raises SourceError if a spec does not exist, matches no image, or is malformed.
    """
    items: list[SourceItem] = []
    seen: set[str] = set()
    for spec in specs:
        skipped = PassedOver()
        for item in _expand(spec, allow_file_urls=allow_file_urls, passed_over=skipped):
            if item.source not in seen:
                seen.add(item.source)
                items.append(item)
        if passed_over is not None:
            passed_over.merge(skipped)
    return items


def _expand(spec: str, *, allow_file_urls: bool, passed_over: PassedOver) -> list[SourceItem]:
    if not spec.strip():
        raise SourceError("empty source (expected a path, glob, manifest or URL)")
    scheme = url_scheme(spec)
    if scheme is None:
        path = Path(os.path.expanduser(spec))
        return _expand_local(spec, path, allow_file_urls, passed_over)
    if scheme in HTTP_SCHEMES:
        return [SourceItem(source=_checked_http_url(spec), origin=redact_url(spec))]
    if scheme == "file":
        # Typed by the user, so allowed; ``allow_file_urls`` only governs manifest rows.
        return _expand_local(spec, file_url_path(spec), allow_file_urls, passed_over)
    if is_object_store(scheme):
        return _expand_object_store(spec, passed_over)
    raise unsupported_scheme(spec)


def _expand_local(
    spec: str, path: Path, allow_file_urls: bool, passed_over: PassedOver
) -> list[SourceItem]:
    if path.is_file():
        if is_manifest(path):
            return read_manifest(path, allow_file_urls=allow_file_urls)
        if not _images_among([str(path)], _local_starts, PassedOver(), str):
            raise SourceError(_not_an_image(spec))
        return [SourceItem(source=os.path.abspath(path), origin=spec)]
    if path.is_dir():
        sources = _walk_images(Path(os.path.abspath(path)), passed_over)
    elif _GLOB_CHARS & set(str(path)):
        sources = _glob_images(str(path), passed_over)
    else:
        raise SourceError(f"{spec} does not exist")
    if not sources:
        raise _nothing_found(spec, passed_over)
    return [SourceItem(source=source, origin=spec) for source in sources]


def _walk_images(root: Path, passed_over: PassedOver) -> list[str]:
    files: list[str] = []
    hidden: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        below = Path(dirpath).relative_to(root)
        # A hidden folder is one entry: what is inside it was never looked at. An output
        # location's state folder, should it be inside what is scanned: not worth a word.
        hidden += [f"{below / d}/" for d in dirnames if d.startswith(".") and d != layout.STATE_DIR]
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                hidden.append(str(below / name))
            else:
                files.append(os.path.join(dirpath, name))
    for name in sorted(hidden, key=_path_key):
        passed_over.add(HIDDEN, name)
    files.sort(key=_path_key)
    return _images_among(
        files, _local_starts, passed_over, lambda path: os.path.relpath(path, root)
    )


def _glob_images(pattern: str, passed_over: PassedOver) -> list[str]:
    # glob skips hidden files and folders unless the pattern names them explicitly.
    matches = {os.path.abspath(m) for m in glob.glob(pattern, recursive=True) if os.path.isfile(m)}
    return _images_among(sorted(matches, key=_path_key), _local_starts, passed_over, str)


def _images_among(
    files: list[str],
    starts: Callable[[list[str]], dict[str, bytes]],
    passed_over: PassedOver,
    shown: Callable[[str], str],
) -> list[str]:
    """The ``files`` that are images: by an image suffix, or, but for a RAW camera file's,
    by the first bytes ``starts`` reads of them. The others are counted in
    ``passed_over``, named as ``shown`` names them."""
    raw = {f for f in files if os.path.splitext(f)[1].lower() in RAW_SUFFIXES}
    heads = starts([f for f in files if f not in raw and not is_image_name(f)])
    images = []
    for file in files:
        if file in raw:
            passed_over.add(RAW_CAMERA_FILE, shown(file))
        elif file not in heads or image_format(heads[file]) is not None:
            images.append(file)
        else:
            passed_over.add(NOT_AN_IMAGE, shown(file))
    return images


def _local_starts(paths: list[str]) -> dict[str, bytes]:
    starts = {}
    for path in paths:
        try:
            with open(path, "rb") as handle:
                starts[path] = handle.read(SIGNATURE_BYTES)
        except OSError:  # unreadable: nothing in it can be taken for an image
            starts[path] = b""
    return starts


def _not_an_image(spec: str) -> str:
    if os.path.splitext(spec)[1].lower() in RAW_SUFFIXES:
        return f"{spec} is a {RAW_CAMERA_FILE}"
    return (
        f"{spec} is neither an image ({_suffix_list()}, or an image's bytes under another "
        f"name) nor a manifest ({', '.join(sorted(MANIFEST_SUFFIXES))})"
    )


def _nothing_found(spec: str, passed_over: PassedOver) -> NoImagesFound:
    passed = f"; passed over: {passed_over.text()}" if passed_over.total else ""
    return NoImagesFound(f"no images found in {spec}{passed}")


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


def _expand_object_store(spec: str, passed_over: PassedOver) -> list[SourceItem]:
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
                if not _images_among([path], partial(_object_starts, store), PassedOver(), str):
                    raise SourceError(_not_an_image(origin))
                return [SourceItem(source=spec, origin=origin)]
        sources = _object_sources(store, keys, root, passed_over)
    except NotFound:
        raise SourceError(f"{origin} does not exist") from None
    except ValueError:  # a key with empty, "." or ".." segments
        raise SourceError(f"{origin} is not a valid object key") from None
    except StorageError as exc:
        raise SourceError(f"cannot list {origin}: {exc}") from exc
    if not sources:
        raise _nothing_found(origin, passed_over)
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


def _object_sources(
    store: BucketStore, keys: list[str], root: str, passed_over: PassedOver
) -> list[str]:
    """Image keys not hidden below ``root``, sorted, as URLs in the scheme the user wrote."""

    def below(key: str) -> str:
        return key[len(root) :].lstrip("/") if key.startswith(root) else key

    visible = []
    hidden: dict[str, None] = {}  # a hidden "folder" is one entry, however many keys it has
    for key in sorted(keys, key=lambda key: PurePosixPath(key).parts):
        parts = below(key).split("/")
        first = next((i for i, part in enumerate(parts) if part.startswith(".")), None)
        if first is None:
            visible.append(key)
        elif parts[first] != layout.STATE_DIR:  # an output location's state: not worth a word
            hidden["/".join(parts[: first + 1]) + ("/" if first < len(parts) - 1 else "")] = None
    for name in hidden:
        passed_over.add(HIDDEN, name)
    images = _images_among(visible, partial(_object_starts, store), passed_over, below)
    return [f"{store.url}/{key}" for key in images]


def _object_starts(store: BucketStore, keys: list[str]) -> dict[str, bytes]:
    """The first bytes of each key, read concurrently (a request each)."""

    def start(key: str) -> bytes:
        try:
            return store.read_start(key, SIGNATURE_BYTES)
        except NotFound:  # gone since it was listed
            return b""

    if not keys:
        return {}
    with ThreadPoolExecutor(min(_SNIFFING_THREADS, len(keys))) as pool:
        return dict(zip(keys, pool.map(start, keys), strict=True))


def _suffix_list() -> str:
    return ", ".join(sorted(IMAGE_SUFFIXES))
