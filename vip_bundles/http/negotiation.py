"""Content negotiation: a browser gets a page, everything else JSON."""

from __future__ import annotations


def prefers_html(accept: str | None) -> bool:
    """True when the Accept header ranks text/html above JSON (a browser); JSON on a tie."""
    if not accept:
        return False
    ranges: dict[str, float] = {}
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media:
            ranges[media.lower()] = max(q, ranges.get(media.lower(), 0.0))

    def quality(media: str) -> float:
        kind = media.split("/")[0]
        for candidate in (media, f"{kind}/*", "*/*"):  # the most specific range decides
            if candidate in ranges:
                return ranges[candidate]
        return 0.0

    return quality("text/html") > quality("application/json")
