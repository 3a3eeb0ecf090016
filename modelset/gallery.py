"""The template gallery: every template's preview with its id and gender, offline."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from modelset.hidream import Gender, HiDreamClient, Template
from modelset.pages import render

GALLERY_HTML = "index.html"
_PREVIEW_CONCURRENCY = 8


async def write_gallery(client: HiDreamClient, folder: Path, gender: Gender | None = None) -> Path:
    """Download every preview into ``folder`` and write a page that needs nothing else."""
    templates = await client.list_templates(gender)
    folder.mkdir(parents=True, exist_ok=True)
    limit = asyncio.Semaphore(_PREVIEW_CONCURRENCY)
    async with httpx.AsyncClient(timeout=30) as downloads:
        names = await asyncio.gather(
            *(_download_preview(downloads, template, folder, limit) for template in templates)
        )
    page = folder / GALLERY_HTML
    figures = list(zip(templates, names, strict=True))
    page.write_text(render("gallery.html.j2", figures=figures), encoding="utf-8")
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
