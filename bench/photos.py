"""Photo-like input JPEGs, generated once into ``bench/.cache/photos-<n>/``.

Every photo is deterministic from ``(seed, index)``: soft gradients and shapes (drawn small,
blurred and scaled up, like out-of-focus scenery), thin sharp strokes (detail) and a crop of
a seeded noise field, saved at JPEG quality 90. That gives about 1 MB per 2K photo,
like a camera's output, so decode, hash and upload sizes are realistic.

Two thirds are 1536x2048 (3:4, sendable as they are); a third are not 3:4 (2048x1536,
2048x2048, 1638x2048, 1152x2048) and make ``--policy fix`` crop. Photo ``i`` is the same file
in every ``photos-<n>`` folder, so a larger set hard-links what a smaller one already made.
"""

from __future__ import annotations

import io
import os
import random
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

CACHE = Path(__file__).resolve().parent / ".cache"
SEED = 20240611
GENERATOR = 2
"""Bump when ``render`` changes: cached folders of another version are made again."""
NOISE_SIDE = 2560
NOISE_ALPHA = 0.12
QUALITY = 90
THREE_BY_FOUR = (1536, 2048)
OTHER_SIZES = ((2048, 1536), (2048, 2048), (1638, 2048), (1152, 2048))

_noise: tuple[int, Image.Image] | None = None


def size_of(index: int) -> tuple[int, int]:
    """Every third photo (index 2, 5, 8, ...) is not 3:4."""
    if index % 3 != 2:
        return THREE_BY_FOUR
    return OTHER_SIZES[(index // 3) % len(OTHER_SIZES)]


def name_of(index: int) -> str:
    return f"model-{index:05d}.jpg"


def _noise_field(seed: int) -> Image.Image:
    """Uniform RGB noise from Python's seeded generator (Pillow's effect_noise uses C rand)."""
    global _noise
    if _noise is None or _noise[0] != seed:
        data = random.Random(seed).randbytes(NOISE_SIDE * NOISE_SIDE * 3)
        _noise = (seed, Image.frombytes("RGB", (NOISE_SIDE, NOISE_SIDE), data))
    return _noise[1]


def _colour(rng: random.Random, low: int = 0, high: int = 256) -> tuple[int, int, int]:
    return (rng.randrange(low, high), rng.randrange(low, high), rng.randrange(low, high))


SMALL = (600, 800)
"""P7's small photos (3:4, all the same size)."""


def render(index: int, seed: int = SEED, size: tuple[int, int] | None = None) -> bytes:
    """The JPEG bytes of photo ``index`` (at ``size``, else its size in the 2K set)."""
    rng = random.Random(seed * 1_000_003 + index)
    width, height = size or size_of(index)
    small = (width // 4, height // 4)
    gradient = Image.linear_gradient("L").rotate(rng.uniform(0, 360)).resize(small)
    image = Image.composite(
        Image.new("RGB", small, _colour(rng, 40, 220)),
        Image.new("RGB", small, _colour(rng, 40, 220)),
        gradient,
    )
    draw = ImageDraw.Draw(image)
    for _ in range(14):
        x, y = rng.randrange(small[0]), rng.randrange(small[1])
        radius = rng.randrange(small[0] // 20, small[0] // 4)
        if rng.random() < 0.5:
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=_colour(rng))
        else:
            draw.rectangle((x - radius, y - radius // 2, x + radius, y + radius), fill=_colour(rng))
    image = image.filter(ImageFilter.GaussianBlur(1.5)).resize(
        (width, height), Image.Resampling.BICUBIC
    )
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        x, y = rng.randrange(width), rng.randrange(height)
        end = (x + rng.randrange(-300, 300), y + rng.randrange(-300, 300))
        draw.line((x, y, *end), fill=_colour(rng), width=rng.randrange(1, 5))
    left, top = rng.randrange(NOISE_SIDE - width + 1), rng.randrange(NOISE_SIDE - height + 1)
    noise = _noise_field(seed).crop((left, top, left + width, top + height))
    image = Image.blend(image, noise, NOISE_ALPHA)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=QUALITY)
    return buffer.getvalue()


def _write(target: Path, index: int, seed: int, size: tuple[int, int] | None = None) -> None:
    data = render(index, seed, size)
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    partial.write_bytes(data)
    os.replace(partial, target)


def _write_many(args: tuple[str, list[int], int, tuple[int, int] | None]) -> int:
    folder, indices, seed, size = args
    for index in indices:
        _write(Path(folder) / name_of(index), index, seed, size)
    return len(indices)


def ensure_small_photos(n: int, *, cache: Path = CACHE) -> Path:
    """``cache/small-<n>/``: n photos of 600x800 (P7), generated once."""
    return ensure_photos(n, cache=cache, size=SMALL)


def ensure_photos(
    n: int,
    *,
    seed: int = SEED,
    cache: Path = CACHE,
    workers: int = 2,
    size: tuple[int, int] | None = None,
) -> Path:
    """``cache/photos-<n>/`` with photos 0..n-1, generating only what is missing (with
    ``size``, ``cache/small-<n>/`` of photos all that size)."""
    kind = "photos" if size is None else "small"
    folder = cache / (f"{kind}-{n}" if seed == SEED else f"{kind}-{n}-s{seed}")
    folder.mkdir(parents=True, exist_ok=True)
    if not _current(folder):
        for stale in folder.glob("*.jpg"):
            stale.unlink()
        (folder / ".generator").write_text(str(GENERATOR))
    siblings = [
        d
        for d in cache.glob(f"{kind}-*")
        if d.is_dir() and d != folder and _same_seed(d, seed) and _current(d)
    ]
    missing: list[int] = []
    for index in range(n):
        target = folder / name_of(index)
        if target.exists():
            continue
        donor = next((d / name_of(index) for d in siblings if (d / name_of(index)).exists()), None)
        if donor is not None:
            os.link(donor, target)
        else:
            missing.append(index)
    if missing:
        if workers > 1 and len(missing) >= 8:
            shares = [missing[i::workers] for i in range(workers)]
            with ProcessPoolExecutor(max_workers=workers) as pool:
                list(pool.map(_write_many, [(str(folder), s, seed, size) for s in shares]))
        else:
            _write_many((str(folder), missing, seed, size))
    return folder


def _current(folder: Path) -> bool:
    try:
        return (folder / ".generator").read_text().strip() == str(GENERATOR)
    except OSError:
        return False


def _same_seed(folder: Path, seed: int) -> bool:
    suffix = folder.name.split("-s", 1)
    return (len(suffix) == 1) if seed == SEED else folder.name.endswith(f"-s{seed}")


def photo_paths(folder: Path, n: int | None = None) -> list[Path]:
    paths = sorted(folder.glob("model-*.jpg"))
    return paths if n is None else paths[:n]


if __name__ == "__main__":
    import sys

    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    print(ensure_photos(count))
