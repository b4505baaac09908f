"""Fetching one URL safely: the HTTP client (`fetch.py`, the `Fetcher`), the network backend
under it that sends every connection through the SSRF guard (`transport.py`, `ssrf.py`),
robots.txt (`robots.py`), HTML pages' links and charset (`html.py`) and canonical URLs
(`urls.py`). agent/crawler.py drives them; nothing here writes to the store."""
