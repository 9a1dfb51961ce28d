"""What a newcomer meets first: the README's snippet, the install instructions, the types a partner's
checker sees, the test extra, the CLI's exit statuses, and the database URLs hosting providers hand out."""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from mailbox_flow import MailboxFlow, State
from mailbox_flow.store import database_url_of
from tools import docgen as _docgen

from .helpers import SECRET
from .test_docs import DOCS, ROOT, blocks, pages

# -- 1. the snippets a reader copies run twice -------------------------------------------------------


def _run_page(page: Path) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": f"docs:{page.name}"}
    for block in blocks(page):
        if block.runnable:
            exec(compile("\n" * (block.line - 1) + block.code, str(page), "exec"), namespace)
    return namespace


@pytest.mark.parametrize("page", [ROOT / "README.md", DOCS / "getting-started.md"],
                         ids=lambda p: p.name)
def test_snippet_runs_twice_in_the_same_directory(page: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Run as a reader would, twice from the same directory: the second run starts afresh (no
    `DuplicateMailbox` from a database the first one left behind)."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("MAILBOX_FLOW_"):
            monkeypatch.delenv(name)
    for _ in range(2):
        namespace = _run_page(page)
        server: Any = namespace.get("mailivery")
        if getattr(server, "running", False):
            server.stop()  # the README's block leaves its simulator running
        flow = namespace.get("flow")
        if isinstance(flow, MailboxFlow):
            flow.close()


# -- 2. no page installs from PyPI what is not published ---------------------------------------------

_PYPI_INSTALL = re.compile(r"""pip install\b[^\n`]*?[ \t"']mailbox-flow(?:[\["' \t]|$)""", re.MULTILINE)


def test_install_instructions_work_before_the_first_release() -> None:
    """While the changelog has no released version, no page says ``pip install mailbox-flow`` (there
    is nothing on PyPI to install): the pages install from a checkout or a wheel."""
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    if re.search(r"^## \[\d+\.\d+\.\d+\]", changelog, re.MULTILINE):
        pytest.skip("a version is released: pip install mailbox-flow works")
    offenders = [f"{page.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
                 for page in pages() for text in [page.read_text(encoding="utf-8")]
                 for m in _PYPI_INSTALL.finditer(text)]
    assert offenders == [], "\n".join(offenders)


# -- 3. a partner's type checker sees the package's types --------------------------------------------

_PARTNER_CODE = '''\
from mailbox_flow import MailboxFlow, State


def count(flow: MailboxFlow) -> int:
    wrong: int = flow.list()
    return wrong


reveal_type(State.WARMING)
'''


def _install_kind() -> str:
    dist = metadata.distribution("mailbox-flow")
    names = [str(f) for f in dist.files or []]
    if any(n.startswith("__editable__") and n.endswith("_finder.py") for n in names):
        return "hook"
    return "editable (static path)" if any(n.startswith("__editable__") for n in names) else "regular"


@pytest.mark.slow  # mypy analyses the package and its dependencies from a cold cache: about 10 s
def test_partner_mypy_sees_the_types(tmp_path: Path) -> None:
    """mypy run in a partner's own project (not this repository) reads mailbox_flow's annotations: it
    reports a wrong type, not "Cannot find implementation or library stub"."""
    (tmp_path / "partner_app.py").write_text(_PARTNER_CODE, encoding="utf-8")
    (tmp_path / "mypy.ini").write_text("[mypy]\nstrict = True\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / ".mypy_cache"), "partner_app.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    output = result.stdout + result.stderr
    if "Cannot find implementation" in output or "missing library stubs" in output:
        kind = _install_kind()
        hint = (" through setuptools' import hook, which static tools do not run: this environment's "
                "editable install predates pyproject's [tool.setuptools] package-dir (or used another "
                "editable_mode); reinstall it with `pip install -e '.[test]'`" if kind == "hook" else "")
        pytest.fail(f"mypy in a partner's project cannot see mailbox_flow (installed {kind}{hint}):\n"
                    f"{output}", pytrace=False)
    assert 'Incompatible types in assignment (expression has type "list[Mailbox]"' in output, output
    assert "mailbox_flow.states.State" in output, output  # reveal_type: the real enum, not Any
    assert result.returncode == 1, output


# -- 5. the test extra installs what the suite imports -----------------------------------------------


def _test_extra_closure() -> set[str]:
    """The distributions `pip install -e '.[test]'` brings: pyproject's own list, then each installed
    requirement's requirements (with their extras and markers)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    own = canonicalize_name(project["name"])
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [(own, frozenset({"test"}))]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        names.add(name)
        if name == own:
            texts = list(project["dependencies"])
            for extra in extras:
                texts += project["optional-dependencies"][extra]
            wanted: frozenset[str] = frozenset()  # markers of our own list are not extra-qualified
        else:
            try:
                texts = list(metadata.distribution(name).requires or [])
            except metadata.PackageNotFoundError:
                continue
            wanted = extras
        for text in texts:
            req = Requirement(text)
            if req.marker is not None and not any(
                req.marker.evaluate({"extra": e}) for e in (*wanted, "")
            ):
                continue
            todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return names


def _suite_files() -> list[Path]:
    return sorted([*(ROOT / "tests").rglob("*.py"), *(ROOT / "examples").rglob("*.py"),
                   *(ROOT / "benchmarks").glob("*.py")])


def _imported(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("importorskip", "import_module") and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.add(node.args[0].value.split(".")[0])
    return found


def test_test_extra_installs_what_the_suite_imports() -> None:
    """Every package the tests, the examples they run, the benchmarks they smoke-test and the runnable
    doc blocks import comes with the ``[test]`` extra (directly or as a dependency), so nothing skips
    for a missing package after the README's test command."""
    closure = _test_extra_closure()
    by_module = metadata.packages_distributions()
    local = {"mailbox_flow", "tests", "tools", "__future__"}  # the repository's own packages
    modules: dict[str, str] = {}
    for path in _suite_files():
        local.update(p.stem for p in path.parent.iterdir() if p.suffix == ".py" or p.is_dir())
        for name in _imported(ast.parse(path.read_text(encoding="utf-8"))):
            modules.setdefault(name, str(path.relative_to(ROOT)))
    for page in pages():
        for block in blocks(page):
            if block.runnable:
                for name in _imported(ast.parse(block.code)):
                    modules.setdefault(name, f"{page.relative_to(ROOT)}:{block.line}")
    problems = []
    for name, where in sorted(modules.items()):
        if name in sys.stdlib_module_names or name in local:
            continue
        dists = {canonicalize_name(d) for d in by_module.get(name, [])}
        if not dists & closure:
            problems.append(f"{name} (imported by {where}; installed from {sorted(dists) or 'nothing'})")
    assert problems == [], "not brought by the [test] extra: " + ", ".join(problems)


# -- 6. every exit status is documented --------------------------------------------------------------


def _exit_codes_in(path: Path) -> set[int]:
    """The integer literals inside ``typer.Exit(...)``, ``SystemExit(...)`` and ``sys.exit(...)``."""
    codes: set[int] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name not in ("Exit", "SystemExit", "exit"):
            continue
        for arg in [*node.args, *(k.value for k in node.keywords)]:
            codes.update(c.value for c in ast.walk(arg)
                         if isinstance(c, ast.Constant) and type(c.value) is int)
    return codes


def _returned_ints(path: Path, function: str) -> set[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {c.value for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef) and node.name == function
            for ret in ast.walk(node) if isinstance(ret, ast.Return) and ret.value is not None
            for c in ast.walk(ret.value) if isinstance(c, ast.Constant) and type(c.value) is int}


def test_every_exit_status_is_documented() -> None:
    """The CLI reference's exit-status table lists exactly the statuses the commands can end with:
    the codes cli.py and web.py exit with, the reconcile report's and the demo's, uvicorn's startup
    failure (a port in use) for the servers, Typer's usage error and Ctrl-C."""
    from uvicorn.config import STARTUP_FAILURE

    package = ROOT / "mailbox_flow"
    cli_source = (package / "cli.py").read_text(encoding="utf-8")
    used = _exit_codes_in(package / "cli.py") | _exit_codes_in(package / "web.py")
    if "report.exit_code" in cli_source:
        used |= _returned_ints(package / "reconcile.py", "exit_code")
    if "run_demo(" in cli_source:
        used |= _returned_ints(package / "demo.py", "finish")
    used |= {STARTUP_FAILURE, 2, 130}  # uvicorn.run in `webhook serve`/`simulate`; Typer: usage, Ctrl-C
    documented = {code for code, _ in _docgen.EXIT_STATUSES}
    assert used == documented, f"used {sorted(used)}, documented {sorted(documented)}"
    meaning = dict(_docgen.EXIT_STATUSES)[STARTUP_FAILURE]
    assert "`webhook serve`" in meaning and "`simulate`" in meaning and "port" in meaning
    page = (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    for code in documented:
        assert re.search(rf"^\| `{code}` \| ", page, re.MULTILINE), f"cli.md has no row for {code}"


# -- 7. postgres:// and postgresql:// -----------------------------------------------------------------


@pytest.mark.parametrize(("given", "driver"), [
    ("postgres://u:p@h:5432/d", "postgresql+psycopg"),
    ("postgresql://u:p@h:5432/d", "postgresql+psycopg"),
    ("postgresql+psycopg2://u@h/d", "postgresql+psycopg"),
    ("postgres+psycopg://u@h/d", "postgresql+psycopg"),
    ("postgresql+psycopg://u@h/d", "postgresql+psycopg"),
    ("sqlite:///x.db", "sqlite"),
    ("sqlite://", "sqlite"),
])
def test_database_urls_are_normalised(given: str, driver: str) -> None:
    """PostgreSQL's spellings all mean psycopg 3; the rest of the URL is kept."""
    url = database_url_of(given)
    assert url.drivername == driver
    assert url.render_as_string(hide_password=False).split("://", 1)[1] == given.split("://", 1)[1]


def _scheme(url: str, scheme: str) -> str:
    return scheme + "://" + url.split("://", 1)[1]


@pytest.mark.postgres
@pytest.mark.parametrize("scheme", ["postgres", "postgresql"])
def test_hosting_provider_urls_open_a_flow_and_migrate(scheme: str, postgres_url: str, client: Any,
                                                        sim: Any) -> None:
    """``postgres://`` (as hosting providers hand it out) and a driverless ``postgresql://`` open a
    working flow on the real server through psycopg 3, and `db upgrade` (Alembic) accepts them."""
    from typer.testing import CliRunner

    from mailbox_flow import cli
    from mailbox_flow.migrate import current_revision, head_revision

    url = _scheme(postgres_url, scheme)
    result = CliRunner().invoke(cli.app, ["db", "upgrade", "--database-url", url])
    assert result.exit_code == 0, result.output
    assert current_revision(url) == head_revision()
    with MailboxFlow(url, client=client, webhook_secret=SECRET) as flow:
        assert flow.store.engine.dialect.driver == "psycopg"
        mailbox = flow.request_connection(owner_id="u1", email="ada@contoso.com", first_name="Ada")
        assert flow.get(mailbox.id).state is State.OAUTH_SENT


# -- 8. the CLI's help reads plainly and starts quickly ------------------------------------------------

_HEAVY = ("sqlalchemy", "sqlmodel", "httpx", "starlette", "uvicorn", "alembic", "mailbox_flow.flow")


def _loaded_after(statement: str) -> set[str]:
    """Top-level modules (and mailbox_flow.flow) loaded in a fresh interpreter by ``statement``."""
    code = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=60).stdout.split()
    return {name for name in out if name.split(".")[0] in _HEAVY or name == "mailbox_flow.flow"}


@pytest.mark.parametrize("statement", [
    "import mailbox_flow",
    "import mailbox_flow.cli",
    "from mailbox_flow.cli import app\nfrom typer.testing import CliRunner\n"
    "assert CliRunner().invoke(app, ['reconcile', '--help']).exit_code == 0",
])
def test_help_and_import_load_no_database_or_http_stack(statement: str) -> None:
    """``import mailbox_flow`` and ``mailbox-flow --help`` load neither SQLAlchemy, httpx nor Starlette:
    the package loads each module when one of its names is first used."""
    assert _loaded_after(statement) == set()


def test_every_public_name_resolves_lazily() -> None:
    """Every name of ``mailbox_flow.__all__`` is importable from the package and listed by dir()."""
    code = ("import mailbox_flow as m\nmissing = [n for n in m.__all__ if getattr(m, n, None) is None]\n"
            "assert not missing, missing\nassert set(m.__all__) <= set(dir(m))\n"
            "from mailbox_flow import *\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    with pytest.raises(AttributeError):
        import mailbox_flow

        _ = mailbox_flow.NoSuchName  # type: ignore[attr-defined]


def _commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for name, sub in getattr(command, "commands", {}).items():
        found += _commands(sub, (*path, name))
    return found


def test_help_shows_no_type_labels_on_options() -> None:
    """No option of any command is labelled ``<bool>``/``<str>``/``<int>``: flags show nothing, options a
    metavar that says what to give (DURATION, N, URL, ...)."""
    import typer.main
    from typer.testing import CliRunner

    from mailbox_flow.cli import app

    runner = CliRunner()
    paths = _commands(typer.main.get_command(app))
    assert len(paths) > 10
    for path in paths:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "120"})
        assert result.exit_code == 0, path
        options = result.output.split("Options", 1)[-1]
        labels = re.findall(r"<(?:bool|str|int|float|Path)>", options)
        assert labels == [], (path, labels)
