"""The template gallery: every template's preview with its id and gender, offline."""

from __future__ import annotations

import asyncio
import html
from pathlib import Path

import httpx

from modelset.hidream import Gender, HiDreamClient, Template

GALLERY_HTML = "index.html"
_PREVIEW_CONCURRENCY = 8

_STYLE = """
body{font:14px system-ui,sans-serif;margin:24px;color:#1f2328}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:16px}
figure{margin:0;border:1px solid #d0d7de;border-radius:6px;padding:8px;text-align:center}
img{width:100%;aspect-ratio:3/4;object-fit:cover;background:#f6f8fa;border-radius:4px}
figcaption b{font-size:16px}
"""


async def write_gallery(client: HiDreamClient, folder: Path, gender: Gender | None = None) -> Path:
    """Download every preview into ``folder`` and write a page that needs nothing else."""
    templates = await client.list_templates(gender)
    folder.mkdir(parents=True, exist_ok=True)
    limit = asyncio.Semaphore(_PREVIEW_CONCURRENCY)
    async with httpx.AsyncClient(timeout=30) as downloads:
        names = await asyncio.gather(
            *(_download_preview(downloads, template, folder, limit) for template in templates)
        )
    figures = "\n".join(
        _figure(template, name) for template, name in zip(templates, names, strict=True)
    )
    page = folder / GALLERY_HTML
    page.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>HiDream templates</title>"
        f"<style>{_STYLE}</style></head><body><h1>HiDream model image set templates</h1>"
        f"<p>{len(templates)} templates. Use an id with <code>modelset run -t ID</code>.</p>"
        f"<div class='grid'>{figures}</div></body></html>\n",
        encoding="utf-8",
    )
    return page


async def _download_preview(
    downloads: httpx.AsyncClient, template: Template, folder: Path, limit: asyncio.Semaphore
) -> str | None:
    if not template.show_image:
        return None
    name = f"template-{template.id}.jpg"
    async with limit:
        try:
            response = await downloads.get(template.show_image)
        except httpx.HTTPError:
            return None
    if response.status_code != 200:
        return None
    (folder / name).write_bytes(response.content)
    return name


def _figure(template: Template, preview: str | None) -> str:
    image = (
        f"<img src='{html.escape(preview)}' alt='template {template.id}'>"
        if preview
        else "<div>no preview</div>"
    )
    return (
        f"<figure>{image}<figcaption><b>{template.id}</b> · "
        f"{html.escape(template.gender)}</figcaption></figure>"
    )
