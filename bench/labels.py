"""LABELS: the CPU that labelling costs per stored image, in process: the XMP labels
written into a generated image (a 768x1024 JPEG as the sandbox renders them), and a
C2PA manifest signed into it with a throwaway key (``modelset.sandbox.certificates``)."""

from __future__ import annotations

import io
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.figures import Bench, Figure, _verdict

LABEL_IMAGES = 200  # quick: a quarter
XMP_GOAL_MS = 5.0
SIGNING_GOAL_MS = 20.0


def _cpu_ms_per_image(label: Callable[[bytes, int], bytes], images: list[bytes]) -> list[float]:
    """CPU per image of ``label`` over ``images``, three times (the first warms caches)."""
    times = []
    for _ in range(3):
        started = time.process_time()
        for index, data in enumerate(images):
            label(data, index)
        times.append((time.process_time() - started) * 1000 / len(images))
    return times


def labels_cpu(bench: Bench) -> Figure:
    """ms of CPU per image for the XMP labels, and for the XMP labels and a signature."""
    from PIL import Image

    from modelset.labels import Generated, Labelling
    from modelset.labels.signing import SigningKey
    from modelset.sandbox.certificates import throwaway_signing_key
    from modelset.sandbox.imagery import render_pose
    from modelset.stages import jpeg_bytes

    count = LABEL_IMAGES // 4 if bench.config.quick else LABEL_IMAGES
    size = (1536, 2048)  # noise: an image that compresses as a photo does, not to nothing
    photo = jpeg_bytes(
        Image.merge("RGB", [Image.effect_noise(size, 30 + 20 * c) for c in range(3)])
    )
    images = [render_pose(photo, 20 + index % 4, 1 + index % 4) for index in range(count)]
    with tempfile.TemporaryDirectory() as folder:
        chain, key, _ = throwaway_signing_key(Path(folder))
        signing = SigningKey.load(chain.read_bytes(), key.read_bytes())
    preview = jpeg_bytes(Image.open(io.BytesIO(photo)).resize((96, 128)))
    made = Generated("task", "request", 20, source_preview=preview)
    unsigned, signed = Labelling("bench", "shop"), Labelling("bench", "shop", signing)
    xmp = _cpu_ms_per_image(lambda data, i: unsigned.output(data, made, f"sub-{i}"), images)
    both = _cpu_ms_per_image(lambda data, i: signed.output(data, made, f"sub-{i}"), images)
    xmp_ms, both_ms = statistics.median(xmp), statistics.median(both)
    signing_ms = both_ms - xmp_ms
    bench.raw["LABELS"] = {"images": count, "xmp_ms": xmp, "xmp_and_signing_ms": both}
    return Figure(
        "LABELS",
        f"labelling CPU per image ({count} generated 768x1024 JPEGs, in process)",
        f"XMP {xmp_ms:.2f} ms/image; signing {signing_ms:.2f} ms/image more",
        f"XMP < {XMP_GOAL_MS:.0f} ms, signing < {SIGNING_GOAL_MS:.0f} ms",
        _verdict(xmp_ms < XMP_GOAL_MS and signing_ms < SIGNING_GOAL_MS),
        [
            f"XMP labels, per repeat: {', '.join(f'{t:.2f}' for t in xmp)} ms (median of 3)",
            f"XMP and C2PA, per repeat: {', '.join(f'{t:.2f}' for t in both)} ms",
        ],
    )
