"""HTML pages: their charset, their links and robots meta tags, and their main text.

Holds HTML_TYPES, `looks_like_html` (by content type, or by the first bytes when none was
sent), `meta_charset` (a <meta charset> in the first 4 KiB), `page_links` (the links to
follow, canonical, resolved against <base href>; none under a nofollow robots meta tag,
which also reports noindex) and `extract_main_text` (trafilatura).

It decodes nothing (text.py) and fetches nothing (fetch.py); it is tolerant of broken
markup and never raises for it.
"""
from __future__ import annotations

import logging
import re
from html.parser import HTMLParser

from agent.web.robots import ROBOTS_AGENT
from agent.inputs.text import Refused
from agent.web.urls import canonical_url

log = logging.getLogger(__name__)

HTML_TYPES = ("text/html", "application/xhtml+xml")
MAX_LINKS = 1000  # links the crawler takes from one page at most (--max-links)
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)


class _LinkParser(HTMLParser):
    """Links, <base href>, robots meta and charset meta; tolerant of broken markup."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.base: str | None = None
        self.nofollow = self.noindex = False

    def handle_starttag(self, tag, attrs):
        a = {k.lower(): (v or "") for k, v in attrs}
        if tag in ("a", "area") and a.get("href"):
            if "nofollow" not in a.get("rel", "").lower().split():
                self.links.append(a["href"])
        elif tag == "base" and a.get("href") and self.base is None:
            self.base = a["href"]
        elif tag == "meta" and a.get("name", "").lower() in ("robots", ROBOTS_AGENT.lower()):
            content = a.get("content", "").lower()
            self.nofollow |= "nofollow" in content or "none" in content
            self.noindex |= "noindex" in content or "none" in content


def looks_like_html(content_type: str, body: bytes) -> bool:
    """An HTML content type, or none and a body that starts like an HTML document."""
    return content_type in HTML_TYPES or (
        not content_type and body.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")))


def meta_charset(body: bytes) -> str | None:
    """The charset a <meta> tag in the first 4 KiB declares, or None."""
    m = _META_CHARSET.search(body[:4096])
    return m.group(1).decode("ascii") if m else None


def page_links(html: str, url: str) -> tuple[list[str], bool]:
    """(canonical links to follow, in page order and each once; noindex) of a page at `url`.

    Links that are no http(s) URLs (mailto:, javascript:, malformed ones) are dropped; a
    robots meta tag saying nofollow leaves none.
    """
    parser = _LinkParser()
    try:
        parser.feed(html)
        parser.close()
    except Exception as e:  # html.parser is tolerant; this is belt and braces
        log.debug("link parser gave up on %s: %r", url, e)
    base = url
    if parser.base:
        try:
            base = canonical_url(parser.base, url)
        except Refused:
            pass
    links = []
    if not parser.nofollow:
        for href in parser.links:
            try:
                links.append(canonical_url(href, base))
            except Refused:
                continue  # mailto:, javascript:, ... are not inputs
    return list(dict.fromkeys(links)), parser.noindex


def extract_main_text(html: str) -> str | None:
    """The main text of an HTML page (trafilatura), None when there is none."""
    import trafilatura   # 0.2 s of lxml and its friends: loaded with the first HTML page

    try:
        return trafilatura.extract(html, include_comments=False, include_tables=True, favor_recall=True)
    except Exception as e:  # trafilatura on pathological markup: a refusal, not a crash
        log.debug("trafilatura failed: %r", e)
        return None
