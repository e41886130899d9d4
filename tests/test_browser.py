"""The report in a real browser: headless Chromium, networking disabled.

How errors are caught without a DevTools client: a TEST COPY of the page gets a tiny first
script that records uncaught errors, unhandled rejections, ``console.error`` calls, failed
resource loads and Content-Security-Policy violations (any attempted fetch: the page forbids
them all) into an attribute of ``<html>``, and, after load, the list of every resource the
page loaded (``performance.getEntriesByType("resource")``). Chromium runs the page under a
virtual-time budget with DNS mapped to nowhere and dumps the final DOM, which we parse. Two
control pages (one throws, one requests a remote image) prove the probe does catch both.

Screenshots go to ``test-output/`` at the repo root (gitignored) for a person to look at.
Skipped only when no Chromium binary is found (CI installs Debian's ``chromium``).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from helpers import tiny_model_with_tokenizer
from test_viz import heldout_tokens, quote_like_circuit, validation_report

from sparse_lens.viz import show_circuit, write_report

OUTPUT = Path(__file__).resolve().parents[1] / "test-output"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")

PROBE = """<script>
(function () {
  var root = document.documentElement, errors = [];
  function record(kind, message) {
    errors.push(kind + ": " + message);
    root.setAttribute("data-probe-errors", JSON.stringify(errors));
  }
  root.setAttribute("data-probe-errors", "[]");
  window.addEventListener("error", function (e) {
    var t = e.target;
    if (t && t !== window && (t.src || t.href)) record("resource", t.src || t.href);
    else record("error", e.message + " at " + e.filename + ":" + e.lineno);
  }, true);
  window.addEventListener("unhandledrejection", function (e) {
    record("rejection", String(e.reason && (e.reason.stack || e.reason)));
  });
  document.addEventListener("securitypolicyviolation", function (e) {
    record("csp", e.violatedDirective + " blocked " + e.blockedURI);
  });
  var consoleError = console.error;
  console.error = function () {
    record("console.error", Array.prototype.map.call(arguments, String).join(" "));
    return consoleError.apply(console, arguments);
  };
  window.addEventListener("load", function () {
    setTimeout(function () {
      var loaded = performance.getEntriesByType("resource").map(function (r) { return r.name; });
      root.setAttribute("data-probe-resources", JSON.stringify(loaded));
      root.setAttribute("data-probe", "done");
    }, 1000);
  });
})();
</script>"""


def _browser() -> str | None:
    for name in (os.environ.get("CHROMIUM"), *BROWSERS):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


BROWSER = _browser()
# Skipped on a developer machine without Chromium; in CI (.ci/run installs it) a missing
# browser is a failure, not a silent skip.
if BROWSER is None and os.environ.get("CI"):
    raise RuntimeError("CI is set but no Chromium binary was found (.ci/run installs chromium)")
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="no Chromium binary found (apt-get install chromium)"
)


def _chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        BROWSER,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--no-first-run",
        "--no-default-browser-check",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
        *args,
        page.as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)


def _screenshot(page: Path, tmp_path: Path, name: str, size: str) -> None:
    """Save ``OUTPUT/<name>.png`` of ``page`` (and the page itself) for a person to look at."""
    OUTPUT.mkdir(exist_ok=True)
    shutil.copy(page, OUTPUT / f"{name}.html")
    shot = OUTPUT / f"{name}.png"
    result = _chromium(
        page, tmp_path / f"shot-profile-{name}", f"--screenshot={shot}", f"--window-size={size}"
    )
    assert result.returncode == 0 and shot.stat().st_size > 10_000, result.stderr[-2000:]


class _DomFacts(HTMLParser):
    """What rendered: <html> attributes, circuit SVG nodes and edges, circuitsvis containers."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.root: dict[str, str] = {}
        self.svg_nodes = self.svg_edges = 0
        self.feed(dom)
        # a container React rendered into is followed by its first child element
        self.visuals = [
            {"id": m[1], "component": m[2], "rendered": m[3] == "<"}
            for m in re.finditer(
                r'<div id="(cv-[\w-]+)" class="cv-vis" data-component="(\w+)">(.?)', dom
            )
        ]

    def handle_starttag(self, tag, attrs):
        values = {k: v or "" for k, v in attrs}
        classes = values.get("class", "").split()
        if tag == "html":
            self.root = values
        elif tag == "g" and "node" in classes:
            self.svg_nodes += 1
        elif tag == "g" and "edge" in classes:
            self.svg_edges += 1


def _probe(page: Path, tmp_path: Path, name: str) -> _DomFacts:
    """Run a probed copy of ``page``; the facts of its final DOM."""
    probed = tmp_path / f"{name}.probed.html"
    text = page.read_text(encoding="utf-8")
    probed.write_text(text.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    result = _chromium(probed, tmp_path / f"profile-{name}", "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    facts = _DomFacts(result.stdout)
    assert facts.root.get("data-probe") == "done", (
        f"the page never finished loading:\n{result.stderr[-2000:]}"
    )
    return facts


def _errors(facts: _DomFacts) -> list[str]:
    return json.loads(html.unescape(facts.root.get("data-probe-errors", "[]")))


def _resources(facts: _DomFacts) -> list[str]:
    return json.loads(html.unescape(facts.root.get("data-probe-resources", "[]")))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    model = tiny_model_with_tokenizer()
    circuit = quote_like_circuit(model)
    out = tmp_path_factory.mktemp("report") / "report.html"
    write_report(
        model,
        circuit,
        validation=validation_report(),
        out_path=out,
        examples=2,
        heldout=heldout_tokens(model),
        top_k=3,
    )
    return model, circuit, out


def test_report_renders_offline_without_errors_or_requests(report, tmp_path):
    model, circuit, page = report
    facts = _probe(page, tmp_path, "report")
    assert _errors(facts) == []
    assert _resources(facts) == []
    assert facts.svg_nodes == len(circuit["nodes"]) and facts.svg_edges == len(circuit["edges"])
    components = {v["component"] for v in facts.visuals}
    assert {"ColoredTokensMulti", "AttentionHeads"} <= components
    empty = [v["id"] for v in facts.visuals if not v["rendered"]]
    assert not empty, f"circuitsvis rendered nothing into {empty}"

    _screenshot(page, tmp_path, "report", "1400,2600")


def test_circuit_diagram_screenshot(report, tmp_path):
    model, circuit, _ = report
    page = show_circuit(circuit, model).save(tmp_path / "circuit.html")
    facts = _probe(page, tmp_path, "circuit")
    assert _errors(facts) == [] and facts.svg_nodes == len(circuit["nodes"])
    _screenshot(page, tmp_path, "circuit", "900,760")


@pytest.mark.parametrize(
    ("name", "inject", "expected"),
    [
        ("throws", "<script>throw new Error('probe-control')</script>", "probe-control"),
        ("fetches", '<img src="https://example.invalid/pixel.png">', "example.invalid"),
        ("console", "<script>console.error('logged-control')</script>", "logged-control"),
    ],
)
def test_probe_catches_errors_and_requests(report, tmp_path, name, inject, expected):
    """Controls: the same report with one planted fault must fail the checks above."""
    _, _, page = report
    broken = tmp_path / f"{name}.html"
    broken.write_text(
        page.read_text(encoding="utf-8").replace("</body>", inject + "</body>"), encoding="utf-8"
    )
    errors = _errors(_probe(broken, tmp_path, name))
    assert any(expected in e for e in errors), errors


@pytest.mark.slow
def test_shipped_quote_circuit_report_renders(tmp_path):
    """The report of the shipped stdlib-sparse quote circuit, as `sparse-lens report` writes it."""
    from sparse_lens.cli import main
    from sparse_lens.pretrained import PRETRAINED_DIR

    circuits = PRETRAINED_DIR / "stdlib-sparse" / "circuits"
    page = tmp_path / "quote-report.html"
    code = main(
        [
            "report",
            "stdlib-sparse",
            "--task",
            "single_double_quote",
            "--circuit",
            str(circuits / "single_double_quote.json"),
            "--validation",
            str(circuits / "single_double_quote.validation.json"),
            "--out",
            str(page),
        ]
    )
    assert code == 0
    circuit = json.loads((circuits / "single_double_quote.json").read_text())
    facts = _probe(page, tmp_path, "shipped")
    assert _errors(facts) == [] and _resources(facts) == []
    assert facts.svg_nodes == circuit["n_nodes"] and facts.svg_edges == circuit["n_edges"]
    assert {"ColoredTokensMulti", "AttentionHeads"} <= {v["component"] for v in facts.visuals}
    assert all(v["rendered"] for v in facts.visuals)
    _screenshot(page, tmp_path, "quote-report", "1400,2600")
