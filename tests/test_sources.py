"""Tests for modelset.sources: discovery, fetching and the SSRF guard.

Network traffic only ever goes to the module's HTTP server on 127.0.0.1. Names such as
``photos.example`` are resolved by a fake ``socket.getaddrinfo``; refused addresses are
refused before any connection is made, which the server's connection counter checks.
"""

from __future__ import annotations

import csv
import hashlib
import io
import ipaddress
import json
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from modelset.images.rules import heif_formats
from modelset.sources import (
    IMAGE_SUFFIXES,
    FetchedFile,
    FetchError,
    PassedOver,
    SourceError,
    SourceItem,
    UnsafeURLError,
    discover,
    fetch,
    netguard,
    redact_url,
)
from modelset.sources import fetching as fetch_module
from modelset.sources.fetching import too_large
from modelset.storage import open_store

# --- helpers -------------------------------------------------------------------------------


def image_bytes(fmt: str = "JPEG", color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, fmt)
    return buffer.getvalue()


JPEG = image_bytes("JPEG")
PNG = image_bytes("PNG", (10, 200, 10))


def write_image(path: Path, fmt: str = "JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(fmt, (len(path.name), 0, 0)))
    return path


def sources(items: list[SourceItem]) -> list[str]:
    return [item.source for item in items]


# --- the local HTTP server -------------------------------------------------------------------


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.hits: Counter[str] = Counter()
        self.hosts: list[str] = []
        self.connections = 0

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out or abort leave broken pipes behind; that is the point

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.lock:
            self.connections += 1
        super().process_request(request, client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        with self.server.lock:
            self.server.hits[self.path] += 1
            hits = self.server.hits[self.path]
            self.server.hosts.append(self.headers.get("Host", ""))
        route = parts.path
        if route == "/img.jpg":
            self.body(200, JPEG, "image/jpeg")
        elif route == "/noext":
            self.body(200, PNG, "image/png")
        elif route == "/r1":
            self.redirect("/r2")
        elif route == "/r2":
            self.redirect("/img.jpg")
        elif route == "/loop":
            self.redirect("/loop")
        elif route == "/redirect":
            self.redirect(query["to"])
        elif route == "/redirect-to-loopback":
            self.redirect(self.server.url("/img.jpg"))
        elif route == "/missing":
            self.body(404, b"nope", "text/plain")
        elif route == "/flaky":
            # The first answer is an error (500 unless ?status= says otherwise), then the image.
            if hits == 1:
                self.body(int(query.get("status", "500")), b"try again", "text/plain")
            else:
                self.body(200, JPEG, "image/jpeg")
        elif route == "/always500":
            self.body(500, b"broken", "text/plain")
        elif route == "/big":
            self.body(200, b"x" * 20_000, "image/jpeg")
        elif route == "/big-chunked":
            self.chunked(b"x" * 1000, 50)
        elif route == "/slow":
            time.sleep(1.5)
            self.body(200, JPEG, "image/jpeg")
        else:
            self.body(404, b"unknown route", "text/plain")

    def body(self, status: int, data: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if status == 429:
            self.send_header("Retry-After", "0")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def chunked(self, chunk: bytes, count: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for _ in range(count):
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client aborted, as it should


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch_module, "RETRY_BACKOFF_S", 0.0)


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "downloads"


DnsAnswer = list[str] | Callable[[], list[str]]


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, DnsAnswer]], None]:
    """Install a resolver for test names; numeric hosts and localhost use the real one.

    Any other name fails like a name that does not exist, so no DNS query leaves the machine.
    """
    real = socket.getaddrinfo

    def install(table: dict[str, DnsAnswer]) -> None:
        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            name = host.decode() if isinstance(host, bytes) else str(host)
            if name in table:
                answer = table[name]
                addresses = answer() if callable(answer) else answer
                return [_addrinfo(ip, int(port or 0)) for ip in addresses]
            if name == "localhost" or _is_ip(name):
                return real(host, port, *args, **kwargs)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)

    return install


@pytest.fixture(autouse=True)
def no_real_dns(fake_dns: Callable[[dict[str, DnsAnswer]], None]) -> None:
    """Safety net: no test in this file may send a DNS query off the machine."""
    fake_dns({})


def _addrinfo(ip: str, port: int) -> tuple[Any, ...]:
    if ":" in ip:
        return (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port, 0, 0))
    return (socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@pytest.fixture
def loopback_is_public(monkeypatch: pytest.MonkeyPatch) -> None:
    """Treat 127.0.0.1 (the test server) as a public address; everything else is unchanged."""
    real = netguard.address_problem
    server_ip = ipaddress.ip_address("127.0.0.1")

    def address_problem(ip: netguard.IPAddress) -> str | None:
        return None if ip == server_ip else real(ip)

    monkeypatch.setattr(netguard, "address_problem", address_problem)


def put_objects(location: str, objects: dict[str, bytes]) -> None:
    """Objects below ``location`` (the ``bucket`` fixture's S3 prefix)."""
    store = open_store(location)
    for key, data in objects.items():
        store.write(key, data)


# --- discover: local files, folders, globs ---------------------------------------------------


def test_image_suffixes() -> None:
    assert {
        ".jpg",
        ".jpeg",
        ".png",
        ".webp",
        ".gif",
        ".tif",
        ".tiff",
        ".bmp",
        ".mpo",
        ".heic",
        ".heif",
        ".hif",
        ".avif",
        ".jpe",
        ".jfif",
    } == set(IMAGE_SUFFIXES)


MIXED_SHOOT = {
    "a.avif": JPEG,  # a suffix is enough: what the file holds is checked when it is read
    "b.HIF": JPEG,
    "c.jfif": JPEG,
    "d.jpe": JPEG,
    "e.dng": b"II*\x00" + bytes(60),  # a RAW file starts like a TIFF
    "f.txt": b"call the studio",
    "g": JPEG,  # an image by its bytes, whatever its name
    "h.dat": PNG,
    "clip.mp4": b"\x00\x00\x00\x18ftypisom" + bytes(40),
    "sub/.DS_Store": b"\x00\x00\x00\x01Bud1",
    ".thumbs/a.jpg": JPEG,  # a hidden folder is one entry
    ".thumbs/b.jpg": JPEG,
    ".modelset/ledger/k.json": b"{}",  # an output location's state: not worth a word
}


def test_a_folder_and_a_bucket_take_images_by_suffix_or_bytes_and_count_what_they_pass_over(
    tmp_path: Path, bucket: str
) -> None:
    for name, data in MIXED_SHOOT.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    put_objects(bucket, {f"shoot/{name}": data for name, data in MIXED_SHOOT.items()})
    expected_entries = [
        ("not an image", 2, "clip.mp4, f.txt"),
        ("RAW camera file (.dng, .cr2, .nef, .arw...): export a JPEG or HEIC", 1, "e.dng"),
        ("hidden", 2, ".thumbs/, sub/.DS_Store"),
    ]
    for spec, root in [(str(tmp_path), f"{tmp_path}/"), (f"{bucket}/shoot", f"{bucket}/shoot/")]:
        passed = PassedOver()
        found = [item.source.removeprefix(root) for item in discover([spec], passed_over=passed)]
        assert found == ["a.avif", "b.HIF", "c.jfif", "d.jpe", "g", "h.dat"], spec
        assert passed.entries() == expected_entries, spec


@pytest.mark.parametrize(
    "image_format", ["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP", "HEIF", "AVIF"]
)
def test_every_format_read_is_taken_without_a_suffix(tmp_path: Path, image_format: str) -> None:
    heif_formats()  # pillow-heif's encoder writes the HEIF
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "look", image_format)
    passed = PassedOver()
    assert sources(discover([str(tmp_path)], passed_over=passed)) == [str(tmp_path / "look")]
    assert passed.total == 0
    assert sources(discover([str(tmp_path / "look")])) == [str(tmp_path / "look")]


def test_a_raw_file_named_alone_says_what_to_do(tmp_path: Path, bucket: str) -> None:
    (tmp_path / "IMG_0001.CR2").write_bytes(b"II*\x00" + bytes(60))
    put_objects(bucket, {"IMG_0002.nef": b"MM\x00*" + bytes(60)})
    for spec in [str(tmp_path / "IMG_0001.CR2"), f"{bucket}/IMG_0002.nef"]:
        with pytest.raises(SourceError, match=r"is a RAW camera file .*: export a JPEG or HEIC$"):
            discover([spec])


def test_no_images_found_names_what_was_passed_over(tmp_path: Path, bucket: str) -> None:
    notes = {f"notes{n:02d}.txt": b"call the studio" for n in range(12)}
    for name, data in {**notes, "a.arw": b"II*\x00"}.items():
        (tmp_path / name).write_bytes(data)
    put_objects(bucket, {f"docs/{name}": data for name, data in notes.items()})
    shown = ", ".join(list(notes)[:10]) + ", ..."
    with pytest.raises(SourceError) as in_folder:
        discover([str(tmp_path)])
    assert str(in_folder.value) == (
        f"no images found in {tmp_path}; passed over: not an image: 12 ({shown}); "
        "RAW camera file (.dng, .cr2, .nef, .arw...): export a JPEG or HEIC: 1 (a.arw)"
    )
    with pytest.raises(SourceError) as in_bucket:
        discover([f"{bucket}/docs"])
    assert str(in_bucket.value) == (
        f"no images found in {bucket}/docs; passed over: not an image: 12 ({shown})"
    )


def test_folder_recursion_is_sorted_and_skips_hidden(tmp_path: Path) -> None:
    root = tmp_path / "shoot"
    for name in [
        "b.jpg",
        "a.PNG",
        "a/b.jpg",
        "sub/deeper/c.JPEG",
        "sub/.hidden.jpg",
        ".cache/d.jpg",
        "sub/.git/e.png",
        "x.webp",
    ]:
        write_image(root / name)
    (root / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()

    items = discover([str(root)])

    expected = ["a/b.jpg", "a.PNG", "b.jpg", "sub/deeper/c.JPEG", "x.webp"]
    assert sources(items) == [str(root / name) for name in expected]
    assert all(item.origin == str(root) for item in items)
    assert all(item.item is None and item.template_ids is None for item in items)


def test_single_file_and_relative_paths_become_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_image(tmp_path / "one.jpg")
    monkeypatch.chdir(tmp_path)
    [item] = discover(["one.jpg"])
    assert item.source == str(tmp_path / "one.jpg")
    assert item.origin == "one.jpg"


def test_file_that_is_not_an_image_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(SourceError, match="neither an image"):
        discover([str(tmp_path / "notes.txt")])


def test_glob_with_double_star(tmp_path: Path) -> None:
    for name in ["top.jpg", "a/one.jpg", "a/b/two.jpg", "a/skip.png", "a/.hidden/three.jpg"]:
        write_image(tmp_path / name)
    items = discover([str(tmp_path / "**" / "*.jpg")])
    assert sources(items) == [str(tmp_path / n) for n in ["a/b/two.jpg", "a/one.jpg", "top.jpg"]]
    assert items[0].origin == str(tmp_path / "**" / "*.jpg")


def test_glob_only_returns_images(tmp_path: Path) -> None:
    write_image(tmp_path / "a.jpg")
    (tmp_path / "b.txt").write_text("x")
    assert sources(discover([str(tmp_path / "*")])) == [str(tmp_path / "a.jpg")]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("missing", "does not exist"),
        ("empty", "no images found in"),
        ("empty/**/*.jpg", "no images found in"),
        ("", "empty source"),
    ],
)
def test_nothing_found_is_an_error(tmp_path: Path, spec: str, message: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no photos here")
    target = str(tmp_path / spec) if spec else spec
    with pytest.raises(SourceError, match=message) as info:
        discover([target])
    if spec:
        assert target in str(info.value)


def test_order_is_kept_and_exact_duplicates_collapse(tmp_path: Path) -> None:
    one = write_image(tmp_path / "set" / "1.jpg")
    two = write_image(tmp_path / "set" / "2.jpg")
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(two.read_bytes())  # same bytes, different source: kept (pipeline dedups)

    items = discover([str(two), str(tmp_path / "set"), str(copy), str(two)])

    assert sources(items) == [str(two), str(one), str(copy)]
    assert items[0].origin == str(two)


def test_empty_spec_list() -> None:
    assert discover([]) == []


def test_http_url_spec_is_kept_verbatim_with_redacted_origin() -> None:
    url = "https://user:pw@cdn.example/shoot/a.jpg?X-Amz-Signature=secret"
    [item] = discover([url, url])
    assert item.source == url
    assert item.origin == "https://cdn.example/shoot/a.jpg"


def test_file_url_spec_on_the_command_line(tmp_path: Path) -> None:
    image = write_image(tmp_path / "a b.jpg")
    assert sources(discover([image.as_uri()])) == [str(image)]


@pytest.mark.parametrize("spec", ["ftp://host/a.jpg", "sftp://host/a.jpg", "webhdfs://h/x"])
def test_unknown_scheme(spec: str) -> None:
    with pytest.raises(SourceError, match="unsupported scheme"):
        discover([spec])


# --- discover: manifests -------------------------------------------------------------------


def write_csv(path: Path, rows: list[list[str]], delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, delimiter=delimiter).writerows(rows)
    return path


def test_csv_manifest(tmp_path: Path) -> None:
    shoot = tmp_path / "shoot"
    write_image(shoot / "a.jpg")
    elsewhere = write_image(tmp_path / "elsewhere" / "b.png")
    manifest = write_csv(
        shoot / "skus.csv",
        [
            ["image", "item", "template_id", "template_ids", "notes"],
            ["a.jpg", "SKU-1", "20", "", "x"],
            [str(elsewhere), "SKU-2", "", "20;21", ""],
            ["sub/../c.jpg", "", "", "", ""],
            ["", "", "", "", ""],  # blank rows are skipped
            ["https://cdn.example/d.jpg?sig=1", "SKU-4", "7", "8, 9", ""],
            ["s3://catalogue/e.jpg", "SKU-5", " 5 ", "", ""],
        ],
    )

    items = discover([str(manifest)])

    assert [(i.source, i.item, i.template_ids) for i in items] == [
        (str(shoot / "a.jpg"), "SKU-1", [20]),
        (str(elsewhere), "SKU-2", [20, 21]),
        (str(shoot / "c.jpg"), None, None),  # not checked here: fetch reports a missing file
        ("https://cdn.example/d.jpg?sig=1", "SKU-4", [7, 8, 9]),
        ("s3://catalogue/e.jpg", "SKU-5", [5]),  # not contacted: fetch reads it
    ]
    assert {i.origin for i in items} == {str(manifest)}


def test_csv_manifest_semicolons_and_bom(tmp_path: Path) -> None:
    manifest = tmp_path / "excel.csv"
    manifest.write_text("\ufeffImage;Item;Template_IDs\nphoto.jpg;A1;3;4\n", encoding="utf-8")
    [item] = discover([str(manifest)])
    assert (item.source, item.item, item.template_ids) == (str(tmp_path / "photo.jpg"), "A1", [3])


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([["image", "item"], ["a.jpg", "x"], ["", "y"]], r"line 3: missing 'image'"),
        ([["image", "template_id"], ["a.jpg", "1"], ["b.jpg", "twenty"]], r"line 3: template_id"),
        ([["image", "template_ids"], ["a.jpg", "1;x"]], r"line 2: template_ids must be an int"),
        ([["image", "template_id"], ["a.jpg", "1.5"]], r"line 2: template_id must be an int"),
        ([["image"], ["ftp://h/a.jpg"]], r"line 2: unsupported scheme"),
        ([["image"], ["http:///a.jpg"]], r"line 2: invalid URL"),
        ([["photo", "item"], ["a.jpg", "x"]], r"no 'image' column \(columns: 'photo', 'item'\)"),
        ([["image"]], r"no images found in .*the manifest has no rows"),
    ],
)
def test_csv_manifest_errors_name_file_and_line(
    tmp_path: Path, rows: list[list[str]], message: str
) -> None:
    manifest = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(SourceError, match=message) as info:
        discover([str(manifest)])
    assert str(manifest) in str(info.value)


def test_empty_csv_file(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(SourceError, match="manifest is empty"):
        discover([str(tmp_path / "empty.csv")])


def write_jsonl(path: Path, lines: list[object | str]) -> Path:
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def test_jsonl_manifest(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    manifest = write_jsonl(
        tmp_path / "m" / "rows.jsonl",
        [
            {"image": "a.jpg", "item": 12345, "template_id": 20},
            "",
            {"image": "../b.jpg", "template_ids": [20, 21, 20]},
            {"image": "c.jpg", "template_id": "7", "template_ids": "8;9", "extra": True},
            {"image": "https://cdn.example/x.jpg", "item": None, "template_ids": []},
        ],
    )

    items = discover([str(manifest)])

    assert [(i.source, i.item, i.template_ids) for i in items] == [
        (str(tmp_path / "m" / "a.jpg"), "12345", [20]),
        (str(tmp_path / "b.jpg"), None, [20, 21]),
        (str(tmp_path / "m" / "c.jpg"), None, [7, 8, 9]),
        ("https://cdn.example/x.jpg", None, None),
    ]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([{"image": "a.jpg"}, "{not json"], r"line 2: invalid JSON"),
        ([{"image": "a.jpg"}, [1, 2]], r"line 2: expected a JSON object"),
        ([{"image": "a.jpg"}, {"item": "x"}], r"line 2: missing 'image'"),
        ([{"image": 5}], r"line 1: 'image' must be a string"),
        ([{"image": "a.jpg", "template_id": True}], r"line 1: template_id must be an integer"),
        ([{"image": "a.jpg", "template_ids": [1, "b"]}], r"line 1: template_ids must be an int"),
        ([{"image": "a.jpg", "template_id": 2.5}], r"line 1: template_id must be an integer"),
        ([{"image": "a.jpg", "item": {"sku": 1}}], r"line 1: 'item' must be text"),
    ],
)
def test_jsonl_manifest_errors_name_file_and_line(
    tmp_path: Path, lines: list[object | str], message: str
) -> None:
    manifest = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(SourceError, match=message) as info:
        discover([str(manifest)])
    assert str(manifest) in str(info.value)


def test_file_urls_in_manifests_need_permission(tmp_path: Path) -> None:
    image = write_image(tmp_path / "a.jpg")
    manifest = write_csv(tmp_path / "m.csv", [["image"], [image.as_uri()]])

    with pytest.raises(SourceError, match=r"line 2: file:// URLs are not allowed"):
        discover([str(manifest)])

    assert sources(discover([str(manifest)], allow_file_urls=True)) == [str(image)]


def test_file_url_with_remote_host_is_refused(tmp_path: Path) -> None:
    manifest = write_csv(tmp_path / "m.csv", [["image"], ["file://fileserver/share/a.jpg"]])
    with pytest.raises(SourceError, match="remote host"):
        discover([str(manifest)], allow_file_urls=True)


# --- discover: object stores -----------------------------------------------------------------


def test_bucket_prefix_object_and_glob(bucket: str) -> None:
    keys = ["shoot/b.jpg", "shoot/a/c.png", "shoot/.thumbs/x.jpg"]
    put_objects(bucket, dict.fromkeys([*keys, "shootout/z.jpg", "top.png"], JPEG))
    put_objects(bucket, {"shoot/notes.txt": b"call the studio"})
    prefix = f"{bucket}/shoot"

    items = discover([prefix])
    assert sources(items) == [f"{prefix}/a/c.png", f"{prefix}/b.jpg"]
    assert {i.origin for i in items} == {prefix}
    assert sources(discover([f"{prefix}/"])) == sources(items)

    assert sources(discover([f"{prefix}/b.jpg"])) == [f"{prefix}/b.jpg"]
    assert sources(discover([f"{prefix}/**/*.png"])) == [f"{prefix}/a/c.png"]
    assert sources(discover([f"{prefix}/*.jpg"])) == [f"{prefix}/b.jpg"]  # one level
    assert sources(discover([f"{bucket}/**/*.png"])) == [
        f"{prefix}/a/c.png",
        f"{bucket}/top.png",  # "**/" also matches no folder at all
    ]
    assert sources(discover([f"{bucket}/shoot[o]ut/*"])) == [f"{bucket}/shootout/z.jpg"]
    # The prefix listing and the single object produce the same string, so they collapse.
    assert sources(discover([f"{prefix}/b.jpg", prefix])) == [
        f"{prefix}/b.jpg",
        f"{prefix}/a/c.png",
    ]


def test_bucket_urls_keep_the_scheme_the_user_wrote(bucket: str, dest: Path) -> None:
    put_objects(bucket, {"shoot/a.jpg": JPEG})
    written = bucket.replace("s3://", "s3a://", 1) + "/shoot"

    [item] = discover([written])

    assert item.source == f"{written}/a.jpg"
    got = fetch(item.source, dest)
    assert (got.source, got.sha256) == (item.source, hashlib.sha256(JPEG).hexdigest())


def test_bucket_errors(bucket: str) -> None:
    put_objects(bucket, {"docs/readme.txt": b"hello"})
    with pytest.raises(SourceError, match="does not exist"):
        discover([f"{bucket}/nothing"])
    with pytest.raises(SourceError, match="no images found in"):
        discover([f"{bucket}/docs"])
    with pytest.raises(SourceError, match="no images found in"):
        discover([f"{bucket}/docs/*.jpg"])
    with pytest.raises(SourceError, match="is neither an image"):
        discover([f"{bucket}/docs/readme.txt"])
    with pytest.raises(SourceError, match="not a valid object key"):
        discover([f"{bucket}/docs/../secrets"])
    with pytest.raises(SourceError, match="names no bucket"):
        discover(["s3:///docs"])
    missing = f"s3://modelset-missing-{uuid.uuid4().hex[:12]}/photos"
    with pytest.raises(SourceError, match=r"does not exist|cannot list") as info:
        discover([missing])
    assert missing in str(info.value)


@pytest.mark.parametrize("suffix", ["?X-Amz-Signature=secret", "?versionId=3", "#secret", "?"])
def test_a_query_string_is_refused_not_dropped(bucket: str, dest: Path, suffix: str) -> None:
    # "?" would end the key: "shoot?ut/*" would silently list "shoot".
    put_objects(bucket, {"a.jpg": JPEG})
    with pytest.raises(SourceError, match="takes no query string") as info:
        discover([f"{bucket}/a.jpg{suffix}"])
    assert str(info.value).startswith(f"{bucket}/a.jpg: ")
    assert "secret" not in str(info.value)
    with pytest.raises(FetchError, match="takes no query string") as fetched:
        fetch(f"{bucket}/a.jpg{suffix}", dest)
    assert fetched.value.source == f"{bucket}/a.jpg"
    assert "secret" not in str(fetched.value)


@pytest.mark.parametrize("url", ["s3://b/p", "s3a://b/p", "gs://b/p", "gcs://b/p", "az://c/p"])
def test_every_object_store_is_built_in(tmp_path: Path, url: str) -> None:
    # Manifest rows are checked, not contacted: each scheme is accepted as it is written.
    manifest = write_csv(tmp_path / "m.csv", [["image"], [f"{url}/a.jpg"]])
    assert sources(discover([str(manifest)])) == [f"{url}/a.jpg"]


# --- fetch: local files ----------------------------------------------------------------------


def test_fetch_local_hashes_in_place(tmp_path: Path, dest: Path) -> None:
    image = write_image(tmp_path / "a.jpg")
    got = fetch(str(image), dest)
    assert got == FetchedFile(
        source=str(image),
        path=image,
        sha256=hashlib.sha256(image.read_bytes()).hexdigest(),
        size=image.stat().st_size,
        temporary=False,
    )
    assert not dest.exists()  # nothing copied


def test_fetch_file_url(tmp_path: Path, dest: Path) -> None:
    image = write_image(tmp_path / "a b.jpg")
    got = fetch(image.as_uri(), dest)
    assert (got.path, got.temporary) == (image, False)


def test_fetch_local_too_large_and_missing(tmp_path: Path, dest: Path) -> None:
    big = tmp_path / "big.jpg"
    big.write_bytes(b"x" * 5000)
    with pytest.raises(FetchError, match=r"too large: 4\.9 KB exceeds the 1000 bytes limit"):
        fetch(str(big), dest, max_bytes=1000)
    with pytest.raises(FetchError, match="not found") as info:
        fetch(str(tmp_path / "gone.jpg"), dest)
    assert info.value.reason == "not found"
    with pytest.raises(FetchError, match="not a regular file"):
        fetch(str(tmp_path), dest)


def test_too_large_message_format() -> None:
    mib = 1024 * 1024
    assert too_large(int(45.2 * mib), 30 * mib) == "too large: 45.2 MB exceeds the 30 MB limit"


# --- fetch: http -----------------------------------------------------------------------------


def test_fetch_http(server: Server, dest: Path) -> None:
    url = server.url("/img.jpg")
    got = fetch(url, dest, allow_private=True)
    sha = hashlib.sha256(JPEG).hexdigest()
    assert (got.source, got.sha256, got.size, got.temporary) == (url, sha, len(JPEG), True)
    assert got.path.parent == dest
    assert got.path.name.startswith(f"{sha}-")
    assert got.path.suffix == ".jpg"
    assert got.path.read_bytes() == JPEG
    # A second identical download gets its own file (each caller may delete its own),
    # and no partial files remain.
    again = fetch(url + "?again=1", dest, allow_private=True)
    assert again.path != got.path
    assert again.path.read_bytes() == JPEG
    assert sorted(p.suffix for p in dest.iterdir()) == [".jpg", ".jpg"]


def test_fetch_http_suffix_from_content_type(server: Server, dest: Path) -> None:
    got = fetch(server.url("/noext"), dest, allow_private=True)
    assert got.path.name.startswith(hashlib.sha256(PNG).hexdigest())
    assert got.path.suffix == ".png"


def test_fetch_with_caller_client(server: Server, dest: Path) -> None:
    with httpx.Client() as client:
        got = fetch(server.url("/img.jpg"), dest, allow_private=True, client=client)
    assert got.sha256 == hashlib.sha256(JPEG).hexdigest()


def test_redirect_chain_is_followed(server: Server, dest: Path) -> None:
    got = fetch(server.url("/r1"), dest, allow_private=True)
    assert got.sha256 == hashlib.sha256(JPEG).hexdigest()
    assert got.source == server.url("/r1")
    assert got.path.suffix == ".jpg"  # from the final URL, since /r1 has none


def test_too_many_redirects(server: Server, dest: Path) -> None:
    with pytest.raises(FetchError, match=r"too many redirects \(more than 5\)"):
        fetch(server.url("/loop"), dest, allow_private=True)
    with pytest.raises(FetchError, match=r"too many redirects \(more than 1\)"):
        fetch(server.url("/r1"), dest, allow_private=True, max_redirects=1)


def test_redirect_to_an_invalid_url(server: Server, dest: Path) -> None:
    with pytest.raises(FetchError, match="redirect to an invalid URL"):
        fetch(server.url("/redirect?to=http://h:abc/"), dest, allow_private=True)


def test_404_fails_without_retry(server: Server, dest: Path) -> None:
    path = f"/missing?k={uuid.uuid4().hex}"
    with pytest.raises(FetchError) as info:
        fetch(server.url(path), dest, allow_private=True)
    assert info.value.reason == "HTTP 404 Not Found"
    assert server.hits[path] == 1


@pytest.mark.parametrize("status", [500, 503, 429])
def test_transient_errors_are_retried(server: Server, dest: Path, status: int) -> None:
    path = f"/flaky?status={status}&k={uuid.uuid4().hex}"
    got = fetch(server.url(path), dest, allow_private=True)
    assert got.sha256 == hashlib.sha256(JPEG).hexdigest()
    assert server.hits[path] == 2


def test_retries_give_up(server: Server, dest: Path) -> None:
    path = f"/always500?k={uuid.uuid4().hex}"
    with pytest.raises(FetchError, match=r"HTTP 500 Internal Server Error \(gave up after 3 att"):
        fetch(server.url(path), dest, allow_private=True, retries=2)
    assert server.hits[path] == 3


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/big", r"too large: 19\.5 KB exceeds the 4.9 KB limit"),  # Content-Length
        ("/big-chunked", r"too large: over the 4.9 KB limit"),  # counted while streaming
    ],
)
def test_too_large_download_is_aborted(server: Server, dest: Path, path: str, message: str) -> None:
    with pytest.raises(FetchError, match=message):
        fetch(server.url(path), dest, allow_private=True, max_bytes=5000)
    assert not dest.exists() or list(dest.iterdir()) == []


def test_timeout(server: Server, dest: Path) -> None:
    started = time.monotonic()
    with pytest.raises(FetchError, match=r"read timed out after 0\.3 s \(gave up after 2 att"):
        fetch(
            server.url(f"/slow?k={uuid.uuid4().hex}"),
            dest,
            allow_private=True,
            timeout=0.3,
            retries=1,
        )
    assert time.monotonic() - started < 1.4


def test_connection_refused_is_retried_then_reported(dest: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(FetchError, match=r"connection failed: .*gave up after 2 attempts"):
        fetch(f"http://127.0.0.1:{port}/a.jpg", dest, allow_private=True, retries=1)


def test_unsupported_scheme_in_fetch(dest: Path) -> None:
    with pytest.raises(SourceError, match="unsupported scheme"):
        fetch("ftp://host/a.jpg", dest)


# --- fetch: object stores --------------------------------------------------------------------


def test_fetch_bucket_object(bucket: str, dest: Path) -> None:
    put_objects(bucket, {"a.JPG": JPEG, "big.jpg": b"x" * 5000, "folder/inside.jpg": JPEG})

    got = fetch(f"{bucket}/a.JPG", dest)
    sha = hashlib.sha256(JPEG).hexdigest()
    assert (got.sha256, got.size, got.temporary) == (sha, len(JPEG), True)
    assert got.path.parent == dest
    assert got.path.name.startswith(f"{sha}-")
    assert got.path.suffix == ".jpg"
    assert got.path.read_bytes() == JPEG

    with pytest.raises(FetchError, match="not found"):
        fetch(f"{bucket}/nope.jpg", dest)
    with pytest.raises(FetchError, match=r"not a file \(a prefix or folder\)"):
        fetch(f"{bucket}/folder", dest)
    # The size is known before reading: the message names it (a streamed read could not).
    with pytest.raises(FetchError) as info:
        fetch(f"{bucket}/big.jpg", dest, max_bytes=1000)
    assert info.value.reason == "too large: 4.9 KB exceeds the 1000 bytes limit"
    assert [p.name for p in dest.iterdir()] == [got.path.name]  # nothing else written


def test_fetch_bucket_object_errors(bucket: str, dest: Path) -> None:
    with pytest.raises(FetchError) as info:
        fetch(f"{bucket}/nope.jpg", dest)
    assert (info.value.source, info.value.reason) == (f"{bucket}/nope.jpg", "not found")
    with pytest.raises(FetchError, match="not a valid object key"):
        fetch(f"{bucket}/a/../b.jpg", dest)
    with pytest.raises(FetchError, match=r"not a file \(a bucket\)"):
        fetch(bucket.rpartition("/")[0], dest)


# --- SSRF guard --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/", "refused: 127.0.0.1 is a loopback address"),
        ("http://[::1]:8080/", "refused: ::1 is a loopback address"),
        ("http://10.0.0.1/", "refused: 10.0.0.1 is a private address"),
        ("http://192.168.1.20/", "refused: 192.168.1.20 is a private address"),
        ("http://169.254.169.254/latest/meta-data/", "is the cloud metadata address"),
        ("http://0.0.0.0/", "refused: 0.0.0.0 is an unspecified address"),
        ("http://[::]/", "refused: :: is an unspecified address"),
        ("http://[fe80::1]/", "is a link-local address"),
        ("http://224.0.0.1/", "is a multicast address"),
        ("http://100.64.0.1/", "is a non-public address"),
        ("http://[::ffff:127.0.0.1]/", "loopback address (127.0.0.1 embedded in IPv6)"),
        ("http://[::ffff:a00:1]/", "private address (10.0.0.1 embedded in IPv6)"),
        ("http://[64:ff9b::a9fe:a9fe]/", "metadata address (169.254.169.254 embedded"),
        ("http://[fd00::1]/", "is a private address"),
    ],
)
def test_guard_refuses_non_public_addresses(url: str, reason: str) -> None:
    with pytest.raises(UnsafeURLError) as info:
        netguard.check_url(url)
    assert reason in info.value.reason
    assert info.value.reason.endswith("(set HIDREAM_ALLOW_PRIVATE_URLS=1 to allow)")


def test_guard_message_for_loopback_matches_the_docs() -> None:
    with pytest.raises(UnsafeURLError) as info:
        netguard.check_url("http://127.0.0.1:8000/a.jpg")
    assert info.value.reason == (
        "refused: 127.0.0.1 is a loopback address (set HIDREAM_ALLOW_PRIVATE_URLS=1 to allow)"
    )


def test_guard_refuses_localhost_by_name() -> None:
    with pytest.raises(UnsafeURLError, match=r"localhost resolves to .*loopback"):
        netguard.check_url("http://localhost/")


@pytest.mark.parametrize("url", ["ftp://example.com/a.jpg", "file:///etc/passwd", "gopher://x/"])
def test_guard_refuses_other_schemes(url: str) -> None:
    with pytest.raises(UnsafeURLError, match="only http"):
        netguard.check_url(url, allow_private=True)


def test_guard_allow_private_skips_resolution(
    fake_dns: Callable[[dict[str, DnsAnswer]], None],
) -> None:
    fake_dns({})
    assert netguard.check_url("http://10.0.0.1/", allow_private=True) == []
    assert netguard.check_url("http://unresolvable.example/", allow_private=True) == []


def test_guard_with_fake_dns(fake_dns: Callable[[dict[str, DnsAnswer]], None]) -> None:
    fake_dns(
        {
            "photos.example": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"],
            "evil.example": ["127.0.0.1"],
            "mixed.example": ["93.184.216.34", "10.1.2.3"],
        }
    )
    assert [str(ip) for ip in netguard.check_url("https://photos.example/a.jpg")] == [
        "93.184.216.34",
        "2606:2800:220:1:248:1893:25c8:1946",
    ]
    with pytest.raises(UnsafeURLError) as info:
        netguard.check_url("https://evil.example/a.jpg")
    assert info.value.reason.startswith(
        "refused: evil.example resolves to 127.0.0.1, which is a loopback address"
    )
    # Every address must be public, not just the first.
    with pytest.raises(UnsafeURLError, match=r"10\.1\.2\.3, which is a private address"):
        netguard.check_url("https://mixed.example/a.jpg")


def test_unresolvable_name_is_a_plain_fetch_error(
    fake_dns: Callable[[dict[str, DnsAnswer]], None], dest: Path
) -> None:
    fake_dns({})
    with pytest.raises(FetchError) as info:
        fetch("https://nowhere.invalid/a.jpg?token=secret", dest)
    assert not isinstance(info.value, UnsafeURLError)
    assert info.value.reason == "could not resolve host nowhere.invalid: Name or service not known"
    assert "secret" not in str(info.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_fetch_refuses_loopback_before_connecting(server: Server, dest: Path, host: str) -> None:
    before = server.connections
    with pytest.raises(UnsafeURLError, match="loopback address"):
        fetch(server.url("/img.jpg", host=host), dest)
    assert server.connections == before


def test_fetch_refuses_redirect_to_loopback(server: Server, dest: Path) -> None:
    # Allowed when private addresses are allowed ...
    got = fetch(server.url("/redirect-to-loopback"), dest, allow_private=True)
    assert got.sha256 == hashlib.sha256(JPEG).hexdigest()
    # ... and refused on the hop otherwise (the first hop is refused too, being loopback).
    with pytest.raises(UnsafeURLError, match=r"127\.0\.0\.1 is a loopback address"):
        fetch(server.url("/redirect-to-loopback"), dest)


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        (
            "http://evil.example:{port}/img.jpg",
            "evil.example resolves to 10.0.0.1, which is a priv",
        ),
        ("http://[::1]:{port}/img.jpg", "::1 is a loopback address"),
        ("http://127.0.0.2:{port}/img.jpg", "127.0.0.2 is a loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "the cloud metadata address"),
        ("file:///etc/passwd", "only http(s) URLs may be fetched, not file"),
    ],
)
def test_redirect_hops_are_checked(
    server: Server,
    dest: Path,
    fake_dns: Callable[[dict[str, DnsAnswer]], None],
    loopback_is_public: None,
    target: str,
    reason: str,
) -> None:
    fake_dns({"evil.example": ["10.0.0.1"]})
    location = target.format(port=server.port)
    path = f"/redirect?to={location}&k={uuid.uuid4().hex}"
    before = server.connections

    with pytest.raises(UnsafeURLError) as info:
        fetch(server.url(path), dest)

    assert info.value.reason.startswith("redirect to ")
    assert ": refused: " in info.value.reason
    assert reason in info.value.reason
    assert server.hits[path] == 1
    assert server.connections == before + 1  # only the redirecting request reached the server


def test_refusal_messages_do_not_leak_credentials(
    server: Server,
    dest: Path,
    fake_dns: Callable[[dict[str, DnsAnswer]], None],
    loopback_is_public: None,
) -> None:
    fake_dns({"evil.example": ["10.0.0.1"]})
    location = f"http://admin:hunter2@evil.example:{server.port}/a.jpg?token=s3cret"
    path = f"/redirect?to={location}"
    with pytest.raises(UnsafeURLError) as info:
        fetch(server.url(path) + "&X-Amz-Signature=abc", dest)
    message = str(info.value)
    assert "evil.example" in message
    for secret in ("hunter2", "admin", "s3cret", "X-Amz-Signature"):
        assert secret not in message


def test_connection_goes_to_the_checked_address_with_the_host_name_kept(
    server: Server,
    dest: Path,
    fake_dns: Callable[[dict[str, DnsAnswer]], None],
    loopback_is_public: None,
) -> None:
    fake_dns({"photos.example": ["127.0.0.1"]})
    got = fetch(f"http://photos.example:{server.port}/img.jpg", dest)
    assert got.sha256 == hashlib.sha256(JPEG).hexdigest()
    assert server.hosts[-1] == f"photos.example:{server.port}"


def test_dns_rebinding_is_caught_at_connect_time(
    server: Server, dest: Path, fake_dns: Callable[[dict[str, DnsAnswer]], None]
) -> None:
    answers = iter([["93.184.216.34"]])  # public for the check, loopback for the connect

    def rebinding() -> list[str]:
        return next(answers, ["127.0.0.1"])

    fake_dns({"rebind.example": rebinding})
    before = server.connections
    with pytest.raises(UnsafeURLError, match=r"rebind\.example resolves to 127\.0\.0\.1"):
        fetch(f"http://rebind.example:{server.port}/img.jpg", dest)
    assert server.connections == before


# --- small helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://u:p@cdn.example/a.jpg?sig=1#frag", "https://cdn.example/a.jpg"),
        ("s3://bucket/key.jpg?versionId=3", "s3://bucket/key.jpg"),
        ("http://[::1]:80/a?b", "http://[::1]:80/a"),
        ("http://u:p@[bad/a?x", "http://[bad/a"),
        ("/local/what?.jpg", "/local/what?.jpg"),
        ("file:///etc/passwd?x", "file:///etc/passwd"),
    ],
)
def test_redact_url(value: str, expected: str) -> None:
    assert redact_url(value) == expected


@given(st.ip_addresses(v=4))
def test_ipv4_mapped_addresses_get_the_same_verdict(ip: ipaddress.IPv4Address) -> None:
    mapped = ipaddress.IPv6Address(f"::ffff:{ip}")
    assert (netguard.address_problem(mapped) is None) == (netguard.address_problem(ip) is None)


def test_fetch_error_pickles() -> None:
    import pickle

    error = UnsafeURLError("https://u:p@x.example/a?q=1", "refused: nope")
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own object
    assert (type(copy), copy.source, copy.reason) == (
        UnsafeURLError,
        "https://x.example/a",
        "refused: nope",
    )


def test_env_is_not_read_by_fetch(
    server: Server, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The caller maps HIDREAM_ALLOW_PRIVATE_URLS to allow_private; fetch itself is explicit.
    monkeypatch.setenv("HIDREAM_ALLOW_PRIVATE_URLS", "1")
    with pytest.raises(UnsafeURLError):
        fetch(server.url("/img.jpg"), dest)
    assert os.environ["HIDREAM_ALLOW_PRIVATE_URLS"] == "1"


def test_a_manifest_in_a_bucket_lists_its_rows(bucket: str) -> None:
    """A sharded run's child reads its shard manifest from the output bucket."""
    store = open_store(bucket)
    store.write(
        "shards/0001.jsonl",
        b'{"image": "s3://elsewhere/a.jpg", "item": "SKU-1", "template_ids": [20]}\n'
        b'{"image": "looks/b.jpg"}\n',
    )
    first, second = discover([f"{bucket}/shards/0001.jsonl"])
    assert (first.source, first.item, first.template_ids) == ("s3://elsewhere/a.jpg", "SKU-1", [20])
    assert second.source == f"{bucket}/shards/looks/b.jpg"  # relative rows sit beside it
    store.write("shards/bad.jsonl", b'{"image": "../../escape.jpg"}\n')
    with pytest.raises(SourceError, match="leaves the manifest's bucket prefix"):
        discover([f"{bucket}/shards/bad.jsonl"])
