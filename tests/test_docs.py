"""The documentation: generated pages are fresh, code blocks run, and the pages cover what exists.

Which code blocks run (README.md and every page under docs/):

- A fenced block whose info string is exactly ``python`` (or ``py``) is *runnable*. The runnable blocks
  of one page run in order, in one shared namespace (a block sees the names an earlier block of the same
  page defined), in a fresh temporary working directory, with no ``MAILBOX_FLOW_*`` variable set. They
  use the bundled simulator (``SimulatorServer``), so they run offline; tracebacks point at the page's
  own line numbers.
- A block whose info string carries anything after the language is *illustrative* and does not run.
  By convention that is a title naming the file it belongs to, e.g. ```` ```python title="app.py" ````:
  use it for excerpts of a partner's own files (framework code, Alembic's env.py) and for
  ``--8<-- "examples/..."`` inclusions of files that other tests run (tests/test_examples.py).
- Blocks in other languages (bash, text, mermaid, ...) never run.

Generated pages (the configuration and CLI references, the API page, the state diagram and table in
docs/concepts.md, docs/assets/states.svg) come from ``python -m tools.docgen``; a stale one
fails `test_generated_pages_are_fresh`, which names the command that refreshes it.
"""

from __future__ import annotations

import os
import re
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailbox_flow import Outcome, State, diagram
from mailbox_flow.states import TRANSITIONS
from tools import docgen as _docgen

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown page."""

    path: Path
    line: int  # 1-based line of the first line of code
    language: str
    extra: str  # the rest of the info string (e.g. 'title="app.py"')
    code: str

    @property
    def runnable(self) -> bool:
        return self.language in ("python", "py") and not self.extra


def blocks(path: Path, text: str | None = None) -> list[Block]:
    """The fenced code blocks of a Markdown page (indented ones too, e.g. inside admonitions)."""
    lines = (path.read_text(encoding="utf-8") if text is None else text).splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = len(opening.group("indent")), opening.group("fence")
        info = opening.group("info").strip()
        language, _, extra = info.partition(" ")
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            stripped = lines[j].strip()
            if stripped.startswith(fence) and set(stripped) == {fence[0]}:
                break
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        found.append(Block(path, i + 2, language.lower(), extra.strip(), "\n".join(body) + "\n"))
        i = j + 1
    return found


def pages() -> list[Path]:
    """README.md and every Markdown page of the site."""
    docs = sorted(p for p in DOCS.rglob("*.md") if "_ext" not in p.parts)
    return [ROOT / "README.md", *docs]


def _runnable_pages() -> list[Path]:
    return [p for p in pages() if any(b.runnable for b in blocks(p))]


# -- code blocks -------------------------------------------------------------------------------------


def test_block_convention() -> None:
    """Plain python blocks run; titled ones and other languages do not; indented fences are found."""
    text = "\n".join([
        "```python", "x = 1", "```",
        '```python title="app.py"', "app = build()", "```",
        "```bash", "mailbox-flow demo", "```",
        '!!! note', "", "    ```python", "    y = x + 1", "    ```",
    ])
    found = blocks(Path("page.md"), text)
    assert [(b.language, b.runnable, b.line) for b in found] == [
        ("python", True, 2), ("python", False, 5), ("bash", False, 8), ("python", True, 13),
    ]
    assert found[3].code == "y = x + 1\n"


def test_readme_and_getting_started_have_runnable_code() -> None:
    """The convention is in use: the README's example and the getting-started walk-through run."""
    for page in (ROOT / "README.md", DOCS / "getting-started.md"):
        assert any(b.runnable for b in blocks(page)), page


def test_runnable_blocks_do_not_include_files() -> None:
    """A ``--8<--`` inclusion belongs in a titled (illustrative) block: its file is run elsewhere."""
    offenders = [f"{b.path.relative_to(ROOT)}:{b.line}" for p in pages() for b in blocks(p)
                 if b.runnable and "--8<--" in b.code]
    assert offenders == []


@pytest.mark.parametrize("page", _runnable_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_code_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every runnable block of the page runs, in order, in one namespace, offline."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("MAILBOX_FLOW_"):
            monkeypatch.delenv(name)
    namespace: dict[str, object] = {"__name__": f"docs:{page.name}"}
    for block in blocks(page):
        if not block.runnable:
            continue
        source = "\n" * (block.line - 1) + block.code  # tracebacks show the page's own line numbers
        exec(compile(source, str(page), "exec"), namespace)


# -- generated pages ---------------------------------------------------------------------------------


def test_generated_pages_are_fresh() -> None:
    """Every generated page matches the code it is generated from."""
    stale = _docgen.stale(ROOT)
    assert stale == [], f"stale generated docs: {', '.join(stale)}; run `{_docgen.COMMAND}` to refresh"


def test_diagram_is_the_machine() -> None:
    """The diagram's arrows are exactly the transition table's, each labelled with its call."""
    table = {(r.trigger, s, r.dest) for r in TRANSITIONS for s in r.sources}
    assert {(e.trigger, e.source, e.dest) for e in diagram.edges()} == table
    text = diagram.mermaid()
    assert text.startswith("stateDiagram-v2\n")
    for edge in diagram.edges():
        assert f"{edge.source.value} --> {edge.dest.value}: {edge.label}" in text
        if edge.effect is not None:
            assert diagram.CALLS[edge.effect] in edge.label


def test_render_knows_its_formats() -> None:
    """render() gives Mermaid and DOT by name and refuses an unknown format."""
    assert diagram.render("mermaid") == diagram.mermaid()
    assert diagram.render("dot") == diagram.dot()
    with pytest.raises(ValueError, match="mermaid"):
        diagram.render("png")


def test_svg_renders_every_state_and_trigger() -> None:
    """svg() is a well-formed SVG naming every state and trigger, carrying its source digest."""
    if shutil.which("dot") is None:
        message = "Graphviz 'dot' is not installed (apt-get install graphviz)"
        if IN_CI:
            pytest.fail(message + ": CI must render the SVG (.ci/run installs it)", pytrace=False)
        pytest.skip(message)
    image = diagram.svg()
    root = ET.fromstring(image.split("\n", 1)[1] if image.startswith("<?xml") else image)
    assert root.tag.endswith("svg")
    texts = {t.text for t in root.iter() if t.tag.endswith("text")}
    assert {s.value for s in State} <= texts
    assert {r.trigger for r in TRANSITIONS} <= texts
    assert f"{diagram.DIGEST_MARK}{diagram.source_digest()}" in image


def test_svg_without_graphviz_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Graphviz, svg() raises ConfigurationError naming the package."""
    from mailbox_flow import ConfigurationError

    with pytest.raises(ConfigurationError, match="install Graphviz"):
        diagram.svg(dot_command="no-such-dot-binary")


def test_stale_page_is_reported(tmp_path: Path) -> None:
    """The freshness check sees a hand edit in a generated page and a missing region."""
    for target in _docgen.targets():
        if target.path.endswith(".svg"):
            continue
        destination = tmp_path / target.path
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_text(_docgen.render(target, ROOT), encoding="utf-8")
    svg = tmp_path / "docs/assets/states.svg"
    svg.parent.mkdir(parents=True, exist_ok=True)
    svg.write_text((DOCS / "assets/states.svg").read_text(encoding="utf-8"), encoding="utf-8")
    assert _docgen.stale(tmp_path) == []
    config = tmp_path / "docs/reference/configuration.md"
    config.write_text(config.read_text(encoding="utf-8") + "hand edit\n", encoding="utf-8")
    svg.write_text(svg.read_text(encoding="utf-8").replace(diagram.source_digest(), "0" * 16))
    assert _docgen.stale(tmp_path) == ["docs/assets/states.svg", "docs/reference/configuration.md"]
    concepts = tmp_path / "docs/concepts.md"
    concepts.write_text("# Concepts\n", encoding="utf-8")
    with pytest.raises(ValueError, match="states-mermaid"):
        _docgen.render(_docgen.targets()[0], tmp_path)


# -- coverage: the pages speak of what exists --------------------------------------------------------


def _text(relative: str) -> str:
    return (DOCS / relative).read_text(encoding="utf-8")


def test_concepts_name_every_state_and_outcome() -> None:
    """Every State and every webhook Outcome is explained on the concepts page."""
    text = _text("concepts.md")
    missing = [v.value for v in [*State, *Outcome] if f"`{v.value}`" not in text]
    assert missing == []


def test_runbook_names_every_reason_and_action() -> None:
    """Every reconciler finding reason and action is explained in the runbook."""
    from mailbox_flow import reconcile

    text = _text("operations/reconcile.md")
    values: list[str] = []
    for name in ("Reason", "Action"):
        values += [member.value for member in getattr(reconcile, name, [])]
    assert [v for v in values if f"`{v}`" not in text] == []


def test_configuration_reference_names_every_setting() -> None:
    """Every Settings field and its environment variable is in the configuration reference."""
    from mailbox_flow import Settings

    text = _text("reference/configuration.md")
    assert [n for n in Settings.model_fields if f"`MAILBOX_FLOW_{n.upper()}`" not in text] == []


_COMMAND_USE = re.compile(r"mailbox-flow((?: [a-z][a-z-]*)+)((?: +(?:--?[a-z][a-z-]*|[^\s`|]+))*)")


def test_commands_quoted_in_the_docs_exist() -> None:
    """Every ``mailbox-flow ...`` command line quoted in the README or the docs names a real command
    and real options."""
    import typer.main

    from mailbox_flow.cli import app

    root = typer.main.get_command(app)
    problems: list[str] = []
    for page in pages():
        if page == DOCS / "reference" / "cli.md":
            continue  # generated from the app itself
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            for match in _COMMAND_USE.finditer(line):
                command, words = root, match.group(1).split()
                path = ["mailbox-flow"]
                while words and getattr(command, "commands", None) is not None:
                    sub = command.commands.get(words[0])
                    if sub is None:
                        break
                    command, path = sub, [*path, words.pop(0)]
                where = f"{page.relative_to(ROOT)}:{number}"
                if command is root or (words and getattr(command, "commands", None) is not None):
                    problems.append(f"{where}: `{match.group(0).strip()}` names no command")
                    continue
                options = {"--help"}
                for param in command.params:
                    options.update(param.opts)
                    options.update(getattr(param, "secondary_opts", []))
                for token in (match.group(1) + match.group(2)).split():
                    name = token.split("=", 1)[0]
                    if name.startswith("-") and name not in options:
                        problems.append(f"{where}: `{' '.join(path)}` has no option {name}")
    assert problems == [], "\n".join(problems)
