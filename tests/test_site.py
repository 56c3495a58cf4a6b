"""The documentation site: built as `make docs` builds it (offline, warnings as errors), then read
as files (every page's internal links and anchors, the API entries, the notebooks' committed
outputs, nothing loaded from another host) and looked at in headless Chromium (the maths typeset by
MathJax, every image loaded, every link on the page resolving, no request leaving the local server,
no console error).

Needs the docs extra (`pip install -e '.[docs]'`) and, for the browser, Debian's `chromium` and
`chromium-driver` (`.ci/run` installs them); each part is skipped, saying why, where they are missing.
"""

import functools
import html.parser
import http.server
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading
import urllib.parse

import nbformat
import pytest

import optax_rmsprop
from optax_rmsprop import compat

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# The pages the browser opens: the home page, an API page, a notebook, and a page of figures.
BROWSER_PAGES = ["index.html", "api/optax_rmsprop.html", "notebooks/02_adagrad_vs_rmsprop.html", "guides/benchmarks.html"]


# -- Building -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def build(tmp_path_factory):
  """One build per session, with `make docs`'s options, into a temporary folder."""
  pytest.importorskip("sphinx", reason="the docs extra is not installed (pip install -e '.[docs]')")
  pytest.importorskip("myst_nb", reason="the docs extra is not installed (pip install -e '.[docs]')")
  out = tmp_path_factory.mktemp("site")
  warnings = out / "warnings.txt"
  cmd = [sys.executable, "-m", "sphinx", "-E", "-W", "--keep-going", "-b", "html", "-w", str(warnings),
         "-d", str(out / "doctrees"), str(ROOT / "docs"), str(out / "html")]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONWARNINGS": "default"}
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  return {"proc": proc, "warnings": warnings.read_text() if warnings.exists() else "", "html": out / "html"}


@pytest.fixture(scope="session")
def site(build):
  if build["proc"].returncode != 0:
    pytest.fail(f"the docs build failed (see test_build_succeeds_without_warnings):\n{build['warnings'][-3000:]}")
  return build["html"]


def test_build_succeeds_without_warnings(build):
  proc = build["proc"]
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert build["warnings"] == "", build["warnings"]
  assert "WARNING" not in proc.stderr, proc.stderr[-3000:]


# -- Reading the built files ----------------------------------------------------------------------


class _Page(html.parser.HTMLParser):
  """A page's ids, links (a/link href) and resources (img/script/source src)."""

  def __init__(self):
    super().__init__()
    self.ids, self.links, self.resources = set(), [], []

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    for key in ("id", "name"):
      if attrs.get(key):
        self.ids.add(attrs[key])
    if tag in ("a", "link") and attrs.get("href"):
      self.links.append((tag, attrs["href"], attrs.get("rel", "")))
    if tag in ("img", "script", "source", "iframe") and attrs.get("src"):
      self.resources.append((tag, attrs["src"]))


@functools.cache
def _parse(path: pathlib.Path) -> _Page:
  page = _Page()
  page.feed(path.read_text(encoding="utf-8"))
  return page


def _is_external(url: str) -> bool:
  return bool(re.match(r"[a-z][a-z0-9+.-]*:", url, re.I)) or url.startswith("//")


def _missing(site: pathlib.Path, target: pathlib.Path, fragment: str, url: str) -> str | None:
  """Why ``url``, which names ``target`` (and an anchor in it), does not resolve; None if it does."""
  site, target = site.resolve(), target.resolve()
  if target.is_dir():
    target = target / "index.html"
  if not target.is_relative_to(site) or not target.is_file():
    return f"{url}: no file {target}"
  if fragment and target.suffix == ".html" and urllib.parse.unquote(fragment) not in _parse(target).ids:
    return f"{url}: no id {fragment!r} in {target.relative_to(site)}"
  return None


def _broken_internal(site: pathlib.Path, page: pathlib.Path, url: str) -> str | None:
  """Why the relative ``url`` on ``page`` does not resolve (None if it does)."""
  parts = urllib.parse.urlsplit(url)
  target = page if not parts.path else page.parent / urllib.parse.unquote(parts.path)
  return _missing(site, target, parts.fragment, url)


def _pages(site):
  return sorted(p for p in site.rglob("*.html") if "_static" not in p.parts)


def test_every_internal_link_and_resource_of_every_page_resolves(site):
  site = site.resolve()
  pages = _pages(site)
  assert len(pages) >= 15, [p.name for p in pages]
  broken, remote = [], []
  for page in pages:
    parsed = _parse(page)
    for tag, url, rel in parsed.links:
      if not _is_external(url):
        broken += [f"{page.relative_to(site)}: {why}"] if (why := _broken_internal(site, page, url)) else []
      elif tag == "link" and "stylesheet" in rel:
        remote.append(f"{page.relative_to(site)}: stylesheet {url}")
    for tag, url in parsed.resources:
      if _is_external(url) and not url.startswith("data:"):
        remote.append(f"{page.relative_to(site)}: {tag} {url}")
      elif not url.startswith("data:") and (why := _broken_internal(site, page, url)):
        broken.append(f"{page.relative_to(site)}: {why}")
  assert not broken, "\n".join(broken[:40])
  assert not remote, "the site loads from other hosts:\n" + "\n".join(remote[:40])


def test_api_reference_documents_every_public_name(site):
  core = _parse(site / "api" / "optax_rmsprop.html").ids
  ports = _parse(site / "api" / "compat.html").ids
  missing = [f"optax_rmsprop.{n}" for n in optax_rmsprop.__all__ if n != "compat" and f"optax_rmsprop.{n}" not in core]
  missing += [f"optax_rmsprop.compat.{n}" for n in compat.__all__ if f"optax_rmsprop.compat.{n}" not in ports]
  assert not missing, f"not in the API reference: {missing}"
  text = (site / "api" / "optax_rmsprop.html").read_text()
  assert 'class="math notranslate nohighlight"' in text  # the docstrings' maths, for MathJax


def test_pages_load_mathjax_from_the_site(site):
  page = (site / "index.html").read_text()
  scripts = [src.split("?")[0] for tag, src in _parse(site / "index.html").resources if "mathjax" in src.lower()]
  assert scripts == ["_static/mathjax/tex-chtml.js"], scripts
  assert (site / "_static" / "mathjax" / "tex-chtml.js").stat().st_size > 100_000
  assert (site / "_static" / "mathjax" / "input" / "tex" / "extensions" / "textmacros.js").is_file()
  assert "cdn" not in page.lower()


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_are_rendered_from_their_committed_outputs(site, notebook):
  page = site / "notebooks" / f"{notebook.stem}.html"
  text = page.read_text()
  nb = nbformat.read(notebook, as_version=4)
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  pngs = sum("image/png" in o.get("data", {}) for o in outputs)
  images = [src for tag, src in _parse(page).resources if tag == "img"]
  assert len(images) == pngs, (len(images), pngs)
  # A committed stream output appears as committed (the pages are never re-executed).
  streams = [line.strip() for o in outputs if o.output_type == "stream" for line in o.text.splitlines() if len(line.strip()) > 20]
  assert streams, notebook.name
  unescaped = html.unescape(re.sub(r"<[^>]+>", "", text))
  assert streams[0] in unescaped and streams[-1] in unescaped


def test_benchmark_pages_name_the_machine_as_the_results_do(site):
  text = html.unescape(re.sub(r"<[^>]+>", "", (site / "guides" / "benchmarks.html").read_text()))
  text = re.sub(r"\s+", " ", text)
  for name in ("results.md", "low_bit.md", "grouping.md"):
    first = (ROOT / "benchmarks" / "results" / "cpu" / name).read_text().splitlines()[0]
    assert re.sub(r"\s+", " ", first) in text, (name, first)
  assert "Not measured yet." in text  # GPU
  assert "Measured on:" not in text


# -- In a browser ---------------------------------------------------------------------------------


def _find(name, default):
  path = shutil.which(name) or (default if os.path.exists(default) else None)
  return path


@pytest.fixture(scope="session")
def server(site):
  handler = functools.partial(_QuietHandler, directory=str(site))
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{httpd.server_address[1]}/"
  httpd.shutdown()
  httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
  def log_message(self, *args):
    pass


@pytest.fixture(scope="session")
def browser():
  webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the docs extra)")
  from selenium.webdriver.chrome.service import Service

  chromium, driver_path = _find("chromium", "/usr/bin/chromium"), _find("chromedriver", "/usr/bin/chromedriver")
  if not chromium or not driver_path:
    pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium chromium-driver; .ci/run does)")
  options = webdriver.ChromeOptions()
  options.binary_location = chromium
  for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
              "--disable-sync", "--window-size=1280,1600"):
    options.add_argument(arg)
  options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
  with pytest.MonkeyPatch.context() as mp:
    # The system's chromedriver and Chromium, named: selenium-manager has nothing to look up or download.
    mp.setenv("SE_OFFLINE", "true")
    mp.setenv("SE_AVOID_STATS", "true")
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
  driver.set_page_load_timeout(60)
  driver.set_script_timeout(60)
  yield driver
  driver.quit()


# Waits for MathJax (when the page has maths) and for every image, loading lazy ones too.
_SETTLE = """
const done = arguments[arguments.length - 1];
const images = Array.from(document.images);
images.forEach(img => { img.loading = 'eager'; });
const loaded = images.map(img => img.complete ? Promise.resolve() :
  new Promise(resolve => { img.addEventListener('load', resolve); img.addEventListener('error', resolve); }));
const math = (window.MathJax && MathJax.startup && MathJax.startup.promise) || Promise.resolve();
Promise.all([math, ...loaded]).then(() => done(true), err => done(String(err)));
"""

_REPORT = """
const body = document.body.cloneNode(true);
body.querySelectorAll('pre, code, script, style, textarea, mjx-container').forEach(e => e.remove());
const math = Array.from(document.querySelectorAll('.math'));
return {
  mathjax: !!(window.MathJax && MathJax.version),
  math: math.length,
  typeset: math.filter(e => e.querySelector('mjx-container')).length,
  containers: document.querySelectorAll('mjx-container').length,
  errors: document.querySelectorAll('mjx-merror').length,
  text: body.textContent,
  images: Array.from(document.images).map(img => [img.currentSrc || img.src, img.complete, img.naturalWidth]),
  links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
  resources: performance.getEntriesByType('resource').map(r => r.name),
};
"""


@pytest.mark.parametrize("path", BROWSER_PAGES)
def test_page_in_a_browser(site, server, browser, path):
  browser.get_log("browser")  # drop what earlier pages logged
  browser.get(server + path)
  assert browser.execute_async_script(_SETTLE) is True
  page = browser.execute_script(_REPORT)

  # The maths is typeset: MathJax ran, every math element holds its output, no TeX error, and
  # no delimiter is left in the text outside code.
  if path != "guides/benchmarks.html":
    assert page["math"] > 0, f"{path} has no maths to typeset"
  if page["math"]:
    assert page["mathjax"], "MathJax did not load"
    assert page["typeset"] == page["math"], f"{page['math'] - page['typeset']} of {page['math']} maths not typeset"
    assert page["containers"] >= page["math"]
  assert page["errors"] == 0, "MathJax reported TeX errors"
  raw = [m for m in re.findall(r"\$\$|\\\(|\\\)|\\\[|\\\]|\$\\[A-Za-z]+", page["text"])]
  assert not raw, f"raw TeX left on {path}: {raw[:5]}"

  # Every image loads.
  bad = [src for src, complete, width in page["images"] if not complete or width == 0]
  assert not bad, f"images that did not load on {path}: {bad}"
  if path.startswith(("notebooks/", "guides/")):
    assert page["images"], f"{path} shows no figure"

  # Every link to the site resolves to a built file, and its anchor exists.
  local = [urllib.parse.urlsplit(url) for url in page["links"] if url.startswith(server)]
  assert local
  broken = [why for u in local if (why := _missing(site, site / urllib.parse.unquote(u.path).lstrip("/"), u.fragment, u.geturl()))]
  assert not broken, "\n".join(broken[:20])

  # Nothing came from another host, and the console logged no error (a 404, a script error).
  foreign = [url for url in page["resources"] if not url.startswith(server) and not url.startswith("data:")]
  assert not foreign, f"{path} fetched from other hosts: {foreign[:10]}"
  errors = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
  assert not errors, json.dumps(errors[:10], indent=1)

