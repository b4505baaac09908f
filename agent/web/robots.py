"""robots.txt: what a fetched robots.txt allows, and the Crawl-delay it asks for (RFC 9309).

Holds ROBOTS_AGENT (the token rules are matched against), `rules_from_response`, which
turns a robots.txt response into rules (a 4xx or none: everything allowed; an unreadable
file: the site treated as disallowed), `unavailable` for a robots.txt that could not be
fetched (5xx, network: disallow everything), `disallowed`, and `crawl_delay`.

Rules are parsed by Protego (the parser Scrapy uses), which implements RFC 9309: `*` and
`$` in paths, the longest matching rule wins (`Disallow: /` then `Allow: /docs/` allows
/docs/...), percent-encoding normalised. urllib.robotparser matched plain prefixes in file
order and got all three wrong. Rules are a Protego, or a string: the reason the whole site
is treated as disallowed. Fetching robots.txt (through the SSRF guard, with redirects) is
fetch.py's job.
"""
from __future__ import annotations

from protego import Protego

ROBOTS_AGENT = "CrystallineCLLM"  # the token robots.txt rules are matched against
ROBOTS_MAX_BYTES = 512 * 1024  # RFC 9309: at least 500 KiB are read; the rest is ignored
MAX_CRAWL_DELAY = 60.0  # seconds; a longer Crawl-delay is capped

Rules = Protego | str  # parsed rules, or why the site is disallowed


def unavailable(reason: str) -> str:
    """Rules for a robots.txt that could not be fetched: the site is treated as disallowed."""
    return f"robots.txt unavailable ({reason}): the site is treated as disallowed"


def rules_from_response(url: str, status: int, body: bytes) -> Rules:
    """The rules of a robots.txt response below 500 (a 4xx means there is none: allow all)."""
    if status >= 400:
        return Protego.parse("")
    text = body[:ROBOTS_MAX_BYTES].decode("utf-8", errors="replace")
    return parse_robots(url, text)


def parse_robots(url: str, text: str) -> Rules:
    """Parsed rules, or the reason the site is treated as disallowed. Protego skips lines it
    cannot read (e.g. "Crawl-delay: ²"); anything it still raises on makes the file unreadable."""
    try:
        return Protego.parse(text)
    except Exception as e:  # a parser bug must not crash a crawl: treat the site as disallowed
        return f"robots.txt unreadable ({type(e).__name__}: {e}): the site is treated as disallowed"


def disallowed(rules: Rules, url: str) -> str | None:
    """Why `url` may not be fetched under `rules`, or None when it may."""
    if isinstance(rules, str):
        return rules
    if not rules.can_fetch(url, ROBOTS_AGENT):
        return "disallowed by robots.txt"
    return None


def crawl_delay(rules: Rules) -> float | None:
    """The Crawl-delay the rules ask of us (capped at MAX_CRAWL_DELAY), or None."""
    if isinstance(rules, str):
        return None
    delay = rules.crawl_delay(ROBOTS_AGENT)
    return min(float(delay), MAX_CRAWL_DELAY) if delay else None
