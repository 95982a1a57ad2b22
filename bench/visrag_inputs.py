"""What the VisRAG-Ret benchmark sends: A4 page screenshots and short search queries, all distinct.

A page is what a document-retrieval index ingests: a 1240x1754 RGB PNG (A4 at 150 dpi) with a
title, lines of antialiased text, a bar chart now and then and a page number, 120-230 KB (180 on
average), so the gateway decodes, hashes and slices as much as it would for a real screenshot (a
flat synthetic page compresses to 15 KB and would flatter the server). VisRAG-Ret's slicing cuts it into a 2x4
grid of 532x378 slices plus a 378x532 overview: 9 tower passes of 1026 patches, ~600 tokens.

Every page and query is new (its number is part of the content), so the gateway's vector cache
can only miss; the bench checks the X-Cache-Hits header anyway.
"""

from __future__ import annotations

import base64
import functools
import io
import random

from PIL import Image, ImageDraw, ImageFont

PAGE_SIZE = (1240, 1754)  # A4 at 150 dpi
# fmt: off
_WORDS = (
    "the", "of", "and", "to", "in", "a", "with", "for", "on", "by", "from", "revenue", "growth", "quarter",
    "annual", "report", "table", "figure", "results", "market", "profit", "loss", "summary", "section", "total",
    "invoice", "customers", "sales", "europe", "asia", "operating", "margin", "2023", "2024", "42.5%", "$1,200",
    "Q3", "net", "income", "cash", "flow", "segment", "outlook", "risk",
)
_QUESTION_WORDS = (
    "what", "was", "the", "revenue", "growth", "in", "Q3", "how", "did", "operating", "margin", "change", "which",
    "segment", "drove", "sales", "where", "is", "cash", "flow", "table", "show", "annual", "report", "summary",
    "for", "europe", "and", "asia", "2023",
)
# fmt: on


@functools.cache
def _fonts() -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, ImageFont.FreeTypeFont | ImageFont.ImageFont]:
    return ImageFont.load_default(size=17), ImageFont.load_default(size=34)


def page_png(number: int, size: tuple[int, int] = PAGE_SIZE) -> bytes:
    """Page `number` as PNG bytes (deterministic for a number and size; different numbers, different
    pages); the layout is made for A4 at 150 dpi, other sizes of that order work too."""
    rng = random.Random(number)
    body, title = _fonts()
    width, height = size
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.text(
        (110, 90), f"Annual report {2000 + number % 25}: {rng.choice(_WORDS)} results", font=title, fill=(20, 20, 60)
    )
    y = 170
    while y < height - 110:
        if rng.random() < 0.06 and y < height - 400:
            draw.rectangle((110, y, width - 110, y + 260), outline=(0, 0, 0))
            for bar in range(max(1, (width - 260) // 160)):
                colour = (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))
                top = y + 250 - rng.randint(30, 230)
                draw.rectangle((130 + bar * 160, top, 230 + bar * 160, y + 250), fill=colour)
            y += 290
            continue
        line = " ".join(rng.choice(_WORDS) for _ in range(16))
        draw.text((110, y), line, font=body, fill=(30, 30, 30))
        y += 26
    draw.text((width // 2 - 30, height - 70), f"page {number}", font=body, fill=(60, 60, 60))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decoded(png: bytes) -> Image.Image:
    """The RGB picture the raw side embeds (the gateway decodes the same bytes itself)."""
    with Image.open(io.BytesIO(png)) as image:
        return image.convert("RGB")


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def query_text(number: int) -> str:
    """A short search query (5-10 words), made distinct by its number."""
    rng = random.Random(number)
    return f"{' '.join(rng.choices(_QUESTION_WORDS, k=rng.randint(5, 10)))} {number}?"


__all__ = ["PAGE_SIZE", "data_uri", "decoded", "page_png", "query_text"]
