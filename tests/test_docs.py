"""The documentation site (``mkdocs.yml``, ``docs/``): every public name has an API entry,
every page is in the nav, and the site builds strictly and works opened from disk.

The first tests read files only. The build tests need the ``docs`` extra (they skip
without mkdocs), and the browser tests headless Chromium (they skip without it): the
built pages open with every host unreachable, their pictures decode, nothing is loaded
from the network, and Material's search finds a page from its local index.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import layertap
from tests.browser import ONCE_REASON, SKIP_REASON, _browser, chromium, not_first_pass, open_offline

pytestmark = pytest.mark.skipif(not_first_pass(), reason=ONCE_REASON)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CONFIG = ROOT / "mkdocs.yml"
#: The pictures the pages show, stored in docs/img/ as copies of the ones the example
#: scripts write (examples/explain_picture.py, examples/answers_picture.py).
PICTURES = ("explain.png", "probe.png", "similarity.png")
#: Built pages that show pictures, and how many each shows at least.
PAGES_WITH_PICTURES = {"index.html": 1, "explain.html": 1, "answers.html": 2}
_DOCS_PACKAGES = ("mkdocs", "material", "mkdocstrings_handlers.python", "mkdocs_click")


def _api_entries() -> set[str]:
    """Every ``::: identifier`` of the pages (mkdocstrings' entries, mkdocs-click's too)."""
    entries = set()
    for page in DOCS.rglob("*.md"):
        entries |= set(re.findall(r"(?m)^::: *(\S+)", page.read_text(encoding="utf-8")))
    return entries


def _ray_all() -> list[str]:
    """``layertap.ray.__all__``, read from the source: importing it needs the ray extra."""
    tree = ast.parse((ROOT / "src" / "layertap" / "ray.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise AssertionError("layertap/ray.py has no __all__")


def _nav_pages() -> list[str]:
    """The ``.md`` files the nav of mkdocs.yml names, in nav order."""
    text = CONFIG.read_text(encoding="utf-8")
    nav = text.split("\nnav:\n", 1)[1]
    nav = re.split(r"\n(?=\S)", nav, maxsplit=1)[0]  # up to the next top-level key
    return re.findall(r"(?m)^\s*- (?:[^:\n]+: )?(\S+\.md)\s*$", nav)


def test_every_public_name_has_an_api_entry() -> None:
    entries = _api_entries()
    wanted = [f"layertap.{name}" for name in layertap.__all__]
    wanted += [f"layertap.ray.{name}" for name in _ray_all()]
    missing = [name for name in wanted if name not in entries]
    assert not missing, f"no '::: name' entry in docs/ for {missing}"


def test_api_entries_name_public_objects() -> None:
    """An entry for a name that left ``__all__`` would document what is not public."""
    public = {f"layertap.{n}" for n in layertap.__all__}
    public |= {f"layertap.ray.{n}" for n in _ray_all()}
    allowed = public | {"mkdocs-click", "layertap._errors"}  # the CLI; the error tree
    stray = sorted(_api_entries() - allowed)
    assert not stray, f"entries for names not in __all__: {stray}"


def test_every_page_is_in_the_nav() -> None:
    nav = _nav_pages()
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(set(nav)) == pages, (
        f"not in the nav: {sorted(set(pages) - set(nav))}; "
        f"in the nav, no such page: {sorted(set(nav) - set(pages))}"
    )
    assert len(nav) == len(set(nav)), "a page is in the nav twice"


@pytest.mark.parametrize("name", PICTURES)
def test_pictures_are_the_examples_copies(name: str) -> None:
    stored = DOCS / "img" / name
    assert stored.read_bytes() == (ROOT / "examples" / name).read_bytes(), (
        f"docs/img/{name} differs from examples/{name}: copy it again"
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built with ``mkdocs build --strict`` into a temporary directory."""
    for package in _DOCS_PACKAGES:
        if importlib.util.find_spec(package.split(".")[0]) is None:
            pytest.skip(f"no {package} (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(CONFIG),
         "--site-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{run.stderr[-4000:]}"
    return out


def test_site_builds_strictly_with_every_page(site: Path) -> None:
    for page in _nav_pages():
        assert (site / page).with_suffix(".html").is_file(), page
    for name in PICTURES:
        assert (site / "img" / name).is_file()


def test_search_index_lists_every_page(site: Path) -> None:
    index = json.loads((site / "search" / "search_index.json").read_text(encoding="utf-8"))
    locations = {doc["location"].split("#", 1)[0] for doc in index["docs"]}
    pages = {Path(p).with_suffix(".html").as_posix() for p in _nav_pages()}
    assert pages <= locations, f"not in the search index: {sorted(pages - locations)}"
    # the offline plugin's copy, which the pages load from file://
    assert (site / "search" / "search_index.js").is_file()


_NETWORK_LOAD = re.compile(
    r"<(?:script|img|iframe|source)\b[^>]*\bsrc=\"(?:https?:)?//"
    r"|<link\b[^>]*\bhref=\"(?:https?:)?//[^\"]*\"[^>]*>"
    r"|@import\s+(?:url\()?[\"']?(?:https?:)?//"
    r"|url\([\"']?(?:https?:)?//",
    re.IGNORECASE,
)


def test_nothing_is_loaded_from_the_network(site: Path) -> None:
    """Plain hyperlinks may point anywhere; scripts, styles, fonts and pictures may not."""
    loads = []
    for path in [*site.rglob("*.html"), *site.rglob("*.css")]:
        for match in _NETWORK_LOAD.finditer(path.read_text(encoding="utf-8")):
            text = match.group(0)
            if text.startswith("<link") and re.search(r'rel="(?:canonical|alternate)"', text):
                continue  # a link relation, not a load
            loads.append(f"{path.relative_to(site)}: {text[:120]}")
    assert not loads, "\n".join(loads)


@pytest.mark.skipif(chromium() is None, reason=SKIP_REASON)
@pytest.mark.parametrize("page", sorted(PAGES_WITH_PICTURES))
def test_pages_open_offline_with_their_pictures(site: Path, page: str) -> None:
    images, bad, console = open_offline(site / page)
    assert images >= PAGES_WITH_PICTURES[page]
    assert bad == 0, f"{bad} of {images} pictures did not decode on {page}"
    errors = [line for line in console if "layertap-check" not in line]
    assert not errors, errors


@pytest.mark.skipif(chromium() is None, reason=SKIP_REASON)
def test_search_works_from_disk(site: Path) -> None:
    """Material's search, run from file:// with every host unreachable, finds the rollout
    section (it opens with the query of ``?q=``)."""
    run = subprocess.run(
        [*_browser(), "--virtual-time-budget=15000", "--dump-dom",
         (site / "index.html").as_uri() + "?q=rollout"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    found = re.search(r'md-search-result__meta">\s*(\d+) matching document', run.stdout)
    assert found is not None, "no search results rendered"
    assert int(found.group(1)) >= 1
    rollout = (site / "explain.html").as_uri() + "?h=rollout#attention-rollout"
    assert f'href="{rollout}"' in run.stdout, "the rollout section is not among the results"
