"""The layers hold: only the `clusterctl.cli` package knows click and the command line;
capabilities import nothing from it; the command modules never import the package's
`__init__` (no hidden import cycle), and `--help` loads no SSH code."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import click

import clusterctl
from clusterctl.cli import LAZY_COMMANDS, main

PACKAGE = Path(clusterctl.__file__).resolve().parent
CLI = PACKAGE / "cli"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, source: str | None = None):
    """(line, absolute module name) of every import in `path`, relative ones resolved;
    `from X import a` yields X and X.a (a may be a module), and importlib.import_module
    with a constant name counts too."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    if source is None:
        source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            yield node.lineno, name
            for alias in node.names:
                yield node.lineno, f"{name}.{alias.name}"
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == \
                "import_module" and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            yield node.lineno, node.args[0].value


def _is(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")


def test_the_walk_sees_relative_and_absolute_imports():
    """The checker itself: a capability importing the CLI in any spelling is caught."""
    text = ("import click\nfrom ..cli import common\nfrom .. import cli\n"
            "from clusterctl.cli.common import handle_errors\n"
            "def f():\n    import importlib\n    importlib.import_module('clusterctl.cli')\n")
    found = [(line, name) for line, name in _imports(PACKAGE / "deploy" / "launch.py", text)
             if _is(name, "click") or _is(name, "clusterctl.cli")]
    assert [line for line, _ in found] == [1, 2, 2, 3, 4, 4, 7]


def test_nothing_outside_the_cli_package_imports_click_or_the_cli():
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(CLI):
            continue
        for line, name in _imports(path):
            if _is(name, "click") or _is(name, "clusterctl.cli"):
                offences.append(f"{_module_name(path)} (line {line}) imports {name}")
    assert not offences, "the CLI layer leaks into capabilities:\n" + "\n".join(offences)


def test_command_modules_import_common_never_the_package():
    families = [p for p in sorted(CLI.glob("*.py"))
                if p.name not in ("__init__.py", "__main__.py")]
    assert {p.stem for p in families} >= {"common", "engine", "deploy", "netcheck", "sync",
                                          "lab", "inventory", "adhoc"}
    offences = []
    for path in families:
        for line, name in _imports(path):
            if name == "clusterctl.cli" or (_is(name, "clusterctl.cli") and
                                            not (CLI / (name.split(".")[2] + ".py")).exists()):
                offences.append(f"{_module_name(path)} (line {line}) imports {name}")
    assert not offences, "a command module imports clusterctl.cli's __init__:\n" + \
        "\n".join(offences)


def test_the_main_group_loads_command_modules_only_when_used():
    """cli/__init__ imports no command family at import time: only `common`."""
    tree = ast.parse((CLI / "__init__.py").read_text(encoding="utf-8"))
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    relative = {n.module for n in top if isinstance(n, ast.ImportFrom) and n.level == 1}
    assert relative == {"common"}
    modules = {module for module, _ in LAZY_COMMANDS.values()}
    assert all((CLI / (m.rpartition(".")[2] + ".py")).exists() for m in modules)


def test_every_lazy_command_resolves_to_a_click_command_of_its_name():
    ctx = click.Context(main)
    for name in LAZY_COMMANDS:
        command = main.get_command(ctx, name)
        assert isinstance(command, click.Command), name
        assert command.name == name


def test_help_loads_no_ssh_code():
    """`clusterctl --help` lists every command without importing the SSH stack (or the
    session): each command module imports its capability inside the command."""
    script = ("import sys\nfrom clusterctl.cli import main\n"
              "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in "
              "('paramiko', 'fabric', 'invoke') or m in ('clusterctl.session', "
              "'clusterctl.remote', 'clusterctl.inventory')), file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "deploy-model" in proc.stdout and "sync-model" in proc.stdout
    assert proc.stderr.strip() == "[]"
