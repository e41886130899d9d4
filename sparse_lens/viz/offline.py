"""circuitsvis visualisations that work offline, with the JavaScript bundle inlined once.

circuitsvis renders two ways. ``str(html)`` / ``show_code()`` import the library from unpkg, so
the page breaks offline and phones home; and its ``_repr_html_`` even probes google.com to decide.
``local_src`` is self-contained but inlines the whole ~1.3 MB bundle into every visualisation,
inside ``<script type="module">`` (where the bundle's top-level ``var CircuitsVis`` stays local
to that script, so it cannot be shared).

We take what is reliable from each: the public functions (``colored_tokens_multi``,
``attention_heads``, ...) build the props, and from their ``local_src`` we keep only the final
``CircuitsVis.render(id, CircuitsVis.Component, props)`` call. The page then carries the bundle
ONCE as a classic ``<script>`` (so ``CircuitsVis`` becomes a global) followed by one small
render script per visualisation. If a future circuitsvis changes that layout, we fall back to
its full ``local_src`` (bigger, still offline).

:func:`external_references` is the static half of the "never fetches anything" guarantee (the
browser test is the dynamic half): it parses a page and lists everything that could make the
browser load a resource.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

CSP = (
    "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
    "img-src data: blob:; font-src data:; worker-src blob:; connect-src 'none'; form-action 'none'"
)
"""Content-Security-Policy of saved pages: inline code and data only, so the browser itself
refuses any load, even one a future circuitsvis might attempt."""

_RENDER_CALL = re.compile(
    r'CircuitsVis\.render\(\s*"(?P<id>[^"]+)",\s*CircuitsVis\.(?P<component>\w+),\s*(?P<props>\{.*\})\s*\)\s*(?:;\s*)?(?:</script>\s*)?$',
    re.S,
)
_SOURCE_MAP = re.compile(r"^//# sourceMappingURL=.*$", re.M)
_SCRIPT_END = re.compile(r"</(script)", re.I)


@functools.lru_cache(maxsize=1)
def circuitsvis_bundle() -> str:
    """The installed circuitsvis browser bundle, safe to place inside one inline ``<script>``.

    ``</script`` becomes ``<\\/script`` (the same string to JavaScript; circuitsvis itself deletes
    it instead, which changes a string React uses) and the source-map comment goes, so that an
    open DevTools does not request ``iife.js.map``.
    """
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    text = path.read_text(encoding="utf-8")
    return _SOURCE_MAP.sub("", _SCRIPT_END.sub(r"<\\/\1", text))


def bundle_script() -> str:
    """The bundle as a classic script: it defines the global ``CircuitsVis`` the visuals use."""
    return f'<script data-role="circuitsvis-bundle">{circuitsvis_bundle()}</script>'


@dataclass(frozen=True)
class Visual:
    """One circuitsvis visualisation: a component name and its JSON props (or a fallback)."""

    component: str
    props: str
    fallback: str | None = None

    def with_props(self, **extra: object) -> Visual:
        """The same visual with more React props (ones the Python wrapper does not expose)."""
        if self.fallback is not None:
            return self
        props = json.loads(self.props)
        props.update(extra)
        return Visual(self.component, json.dumps(props))

    def html(self, element_id: str) -> str:
        """A ``<div>`` and the script that renders into it; needs :func:`bundle_script` before."""
        if self.fallback is not None:
            return f'<div class="cv-vis cv-fallback" data-component="{self.component}">{self.fallback}</div>'
        # "<" as \u003c: the props hold token text (e.g. "</script>" in Python source).
        props = self.props.replace("<", "\\u003c")
        return (
            f'<div id="{element_id}" class="cv-vis" data-component="{self.component}"></div>'
            f'<script>CircuitsVis.render("{element_id}", CircuitsVis.{self.component}, {props});</script>'
        )


def visual(rendered: object) -> Visual:
    """A :class:`Visual` from what a circuitsvis function returned (a ``RenderedHTML``)."""
    local_src = str(rendered.local_src)
    start = local_src.rfind("CircuitsVis.render(")
    match = _RENDER_CALL.match(local_src[start:]) if start >= 0 else None
    if match is None:
        return Visual(component="unknown", props="{}", fallback=local_src)
    json.loads(match["props"])  # it must be plain JSON data, nothing executable
    return Visual(component=match["component"], props=match["props"])


def is_render_call(script: str) -> bool:
    """Whether a script is exactly one render call with JSON props (data, no code)."""
    match = _RENDER_CALL.match(script.strip())
    if match is None:
        return False
    try:
        json.loads(match["props"].replace("\\u003c", "<"))
    except json.JSONDecodeError:
        return False
    return True


# ------------------------------------------------------------------ static offline check
_URL_ATTRS = {
    "src",
    "href",
    "srcset",
    "data",
    "action",
    "formaction",
    "poster",
    "background",
    "xlink:href",
    "manifest",
    "ping",
    "codebase",
    "archive",
    "longdesc",
    "lowsrc",
    "imagesrcset",
}
_CSS_URL = re.compile(r"url\(\s*(?!['\"]?\s*(?:#|data:))[^)]*\)|@import", re.I)
_SCRIPT_NETWORK = re.compile(
    r"https?://|//cdn|unpkg|fetch\s*\(|import\s*\(|\bimport\b[^;]*\bfrom\b|XMLHttpRequest|WebSocket|"
    r"EventSource|sendBeacon|importScripts|new\s+Worker|\.src\s*=|location\s*=",
    re.I,
)


def _local_reference(value: str) -> bool:
    value = value.strip()
    return value == "" or value.startswith("#") or value.lower().startswith("data:")


class _ReferenceFinder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self._in: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name.lower(): (value or "") for name, value in attrs}
        for name, value in values.items():
            if name in _URL_ATTRS and not _local_reference(value):
                self.found.append(f"<{tag} {name}={value!r}>")
            if name == "style" and _CSS_URL.search(value):
                self.found.append(f"<{tag} style={value!r}>")
            if name.startswith("on") and _SCRIPT_NETWORK.search(value):
                self.found.append(f"<{tag} {name}={value!r}>")
        if tag == "base" or (tag == "meta" and values.get("http-equiv", "").lower() == "refresh"):
            self.found.append(f"<{tag} {values}>")
        if tag == "link":
            self.found.append(f"<link {values}>")
        if tag in ("script", "style"):
            self._in, self._text = tag, []

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag in ("script", "style"):
            self.handle_endtag(tag)

    def handle_data(self, data: str) -> None:
        if self._in is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag != self._in:
            return
        text = "".join(self._text)
        self._in = None
        if tag == "style":
            if _CSS_URL.search(text):
                self.found.append(f"<style> with {_CSS_URL.search(text)[0]!r}")
            return
        if text == circuitsvis_bundle() or is_render_call(text):
            return  # the pinned library bundle (checked in a browser) or pure data
        hit = _SCRIPT_NETWORK.search(text)
        if hit is not None:
            self.found.append(
                f"<script> with {hit[0]!r}: {text[max(0, hit.start() - 40) : hit.end() + 40]!r}"
            )


def external_references(html: str) -> list[str]:
    """Everything in ``html`` that could make a browser load something, local files included.

    URL-bearing attributes (src, href, srcset, ...) other than ``#fragment`` and ``data:``,
    ``<link>``, ``<base>``, meta refresh, CSS ``url()`` / ``@import``, and network APIs or URLs in
    scripts other than the circuitsvis bundle and pure-data render calls. Text is never fetched,
    so a token like ``"http://example.org"`` in a displayed snippet is fine.
    """
    finder = _ReferenceFinder()
    finder.feed(html)
    finder.close()
    return finder.found
