"""The documents: every repository path and link they name exists, none points outside the
repository, and the README stays a front door (short, linking each document in docs/).

Only what looks like a repository path is checked: a link without a scheme, or a word in code
(inline or fenced) that starts with a top-level name of the repository and contains a `/` or ends
with a known file extension. `<id>` and `*` in a path stand for any name; at least one file must
match.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
DOCUMENTS = [README, *DOCS, ROOT / "mappings" / "README.md", ROOT / "fixtures" / "README.md"]
FIVE_DOCS = ("integrating", "clinical", "utilization", "operations", "speed")

TOP_DIRS = {"cds_service", "docs", "mappings", "fixtures", "tests", "bench", "scripts", "deploy", ".ci"}
TOP_FILES = {"README.md", "pyproject.toml", "docker-compose.yml", "Dockerfile"}
EXTENSIONS = (".py", ".md", ".json", ".yaml", ".yml", ".toml", ".sh", ".lua", ".conf", ".template", ".mako")
# Absolute paths that name someone's machine, not the repository or an installed system tool.
FOREIGN_PATH = re.compile(r"(?<![\w.:/-])(?:/(?:work|home|Users|root|tmp|mnt|srv|opt|shared)/|~/|file:)")

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[(?:[^\]\n]|\][^(])*?\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code spans."""
    return CODE_SPAN.sub(" ", FENCE.sub("\n", text))


def _code(text: str) -> list[str]:
    """Every piece of code: fenced blocks and inline spans."""
    fences = [m.group(0) for m in FENCE.finditer(text)]
    return fences + CODE_SPAN.findall(FENCE.sub("\n", text))


def repository_paths(text: str) -> set[str]:
    """The words in code that look like repository paths (see the module's docstring)."""
    found = set()
    for code in _code(text):
        code = re.sub(r"<[^<>\s]*>", "*", code)  # fixtures/hooks/<id>.order-select.json
        for word in code.split():
            if "://" in word:
                continue
            for piece in re.split(r"[=,;()\"'\[\]{}@|\\]", word):
                piece = piece.strip(".:…")
                if _looks_like_repository_path(piece):
                    found.add(piece)
    return found


def _looks_like_repository_path(piece: str) -> bool:
    first = piece.split("/")[0]
    if first in TOP_FILES:
        return piece == first
    return first in TOP_DIRS and ("/" in piece or piece.endswith(EXTENSIONS))


def module_names(text: str) -> set[str]:
    """Dotted names in code that start with the package (`cds_service.cli.fixtures`)."""
    return {m for code in _code(text) for m in re.findall(r"(?<![\w./])cds_service(?:\.\w+)+", code)}


def module_exists(dotted: str) -> bool:
    """`cds_service.cli.fixtures.load_json`: the longest run of packages, then a module or a name
    the last package defines or imports."""
    parts = dotted.split(".")
    path, index = ROOT / parts[0], 1
    while index < len(parts) and (path / parts[index]).is_dir():
        path, index = path / parts[index], index + 1
    if index == len(parts):
        return True
    name = re.escape(parts[index])
    if (path / f"{parts[index]}.py").is_file():
        return True
    init = path / "__init__.py"
    defined = re.compile(rf"^\s*(?:def|class)\s+{name}\b|^{name}\s*=|^from .* import .*\b{name}\b", re.M)
    return init.is_file() and bool(defined.search(init.read_text(encoding="utf-8")))


def links(text: str) -> list[str]:
    return LINK.findall(_prose(text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for _, heading in HEADING.findall(FENCE.sub("\n", path.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def _exists(relative: str) -> bool:
    if "*" in relative:
        return any(ROOT.glob(relative.rstrip("/")))
    return (ROOT / relative).exists()


def _inside(path: Path) -> bool:
    try:
        path.resolve().relative_to(ROOT)
    except ValueError:
        return False
    return True


@pytest.fixture(params=DOCUMENTS, ids=_name)
def document(request) -> Path:
    return request.param


def test_the_checks_see_the_paths():
    # A guard against a checker that quietly finds nothing.
    text = README.read_text(encoding="utf-8")
    assert {"scripts/test.sh", "cds_service/clinical/", "fixtures/hooks/lbp-acute-simple.order-select.json"} <= (
        repository_paths(text)
    )
    assert "docs/clinical.md" in links(text)
    assert repository_paths("`fixtures/hooks/<id>.order-select.json`, `CDS_X=docs/a.json`, `var/x.py`") == {
        "fixtures/hooks/*.order-select.json",
        "docs/a.json",
    }
    assert module_exists("cds_service.cli.fixtures.load_json") and module_exists("cds_service.cli.main")
    assert not module_exists("cds_service.fixtures.load_json")
    assert slug("Authentication (CDS Hooks 2.0 JWT)") == "authentication-cds-hooks-20-jwt"
    assert slug("Prefetch and reading the EHR's FHIR server") == "prefetch-and-reading-the-ehrs-fhir-server"


def test_every_repository_path_named_exists(document):
    text = document.read_text(encoding="utf-8")
    missing = sorted(p for p in repository_paths(text) if not _exists(p))
    assert not missing, f"{_name(document)} names paths that are not in the repository: {missing}"


def test_every_module_named_exists(document):
    missing = sorted(m for m in module_names(document.read_text(encoding="utf-8")) if not module_exists(m))
    assert not missing, f"{_name(document)} names modules that do not exist: {missing}"


def test_every_relative_link_exists_with_its_anchor(document):
    broken = []
    for target in links(document.read_text(encoding="utf-8")):
        if SCHEME.match(target):
            if target.lower().startswith("file:"):
                broken.append(f"{target} (a file outside the repository)")
            continue
        relative, _, anchor = target.partition("#")
        path = (document.parent / relative) if relative else document
        if not _inside(path):
            broken.append(f"{target} (outside the repository)")
        elif not path.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target} (no heading #{anchor} in {_name(path.resolve())})")
    assert not broken, f"{_name(document)} has broken links: {broken}"


def test_nothing_points_outside_the_repository(document):
    text = document.read_text(encoding="utf-8")
    assert "../shared" not in text and "shared/reference" not in text, (
        f"{_name(document)} names the shared reference by path: name it by its title"
    )
    foreign = sorted({m.group(0) for m in FOREIGN_PATH.finditer(text)})
    assert not foreign, f"{_name(document)} names absolute paths outside the repository: {foreign}"
    escaping = sorted(
        {m for m in re.findall(r"(?:\.\./)+[\w.-]+", text) if not _inside(document.parent / m.split("#")[0])}
    )
    assert not escaping, f"{_name(document)} names relative paths outside the repository: {escaping}"


def test_readme_is_a_front_door():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < 200, f"README.md has {len(lines)} lines: move the details to docs/"


def test_readme_links_every_document():
    targets = {target.partition("#")[0] for target in links(README.read_text(encoding="utf-8"))}
    expected = {f"docs/{name}.md" for name in FIVE_DOCS} | {_name(path) for path in DOCS}
    assert expected <= targets, f"README.md does not link {sorted(expected - targets)}"
    assert all((ROOT / "docs" / f"{name}.md").is_file() for name in FIVE_DOCS)


@pytest.mark.parametrize(
    "document,fixture",
    [("README.md", "lbp-acute-simple"), ("docs/integrating.md", "lbp-osteoporosis")],
)
def test_the_example_card_is_what_the_service_answers(document, fixture):
    """The example's summary, suggestion labels and rating are the service's own, for that fixture."""
    from datetime import date

    from cds_service.cli import fixtures
    from cds_service.clinical.mappings import get_mappings
    from cds_service.hooks.evaluation import evaluate_hook

    text = (ROOT / document).read_text(encoding="utf-8")
    assert f"fixtures/hooks/{fixture}.order-select.json" in text
    body = fixtures.hook_request(fixture, "order-select", today=date(2026, 11, 22))
    response = evaluate_hook("spine-mri-order-select", body, get_mappings(), as_of=date(2026, 11, 22)).response
    card = response["cards"][0]
    assert f'"summary": "{card["summary"]}"' in text
    assert f'"indicator": "{card["indicator"]}"' in text
    for suggestion in card["suggestions"]:
        assert f'"label": "{suggestion["label"]}"' in text
    assert f'"description": "{response["systemActions"][0]["description"]}"' in text
