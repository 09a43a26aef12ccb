"""The architecture's rules: no import cycles, hazmat only in exchange.crypto, the core does no I/O."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "exchange"
MODULES = sorted(
    ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
    for p in PACKAGE.rglob("*.py")
    if p.name != "__main__.py"
)
CORE = ("exchange.crypto", "exchange.model", "exchange.protocol", "exchange.merkle", "exchange.errors")
SHELL_ONLY = (
    "aiohttp",
    "sqlalchemy",
    "asyncio",
    "socket",
    "ssl",
    "os",
    "exchange.store",
    "exchange.node",
    "exchange.cli",
    "exchange.config",
    "exchange.keystore",
    "exchange.clock",
)


def imports_of(module: str) -> set[str]:
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = PACKAGE.parent / module.replace(".", "/") / "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_alone_in_a_fresh_interpreter(module: str) -> None:
    proc = subprocess.run([sys.executable, "-W", "error", "-c", f"import {module}"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_only_exchange_crypto_imports_hazmat() -> None:
    offenders = [
        m
        for m in MODULES
        if not m.startswith("exchange.crypto")
        and any("hazmat" in i or i.startswith("cryptography") for i in imports_of(m))
    ]
    assert offenders == []


def test_functional_core_does_no_io() -> None:
    offenders = {
        m: sorted(i for i in imports_of(m) if i.split(".")[0] in SHELL_ONLY or i.startswith(SHELL_ONLY))
        for m in MODULES
        if m.startswith(CORE)
    }
    # The crypto recipes may use os.urandom as their default randomness source.
    offenders = {m: [i for i in v if not (m.startswith("exchange.crypto") and i == "os")] for m, v in offenders.items()}
    assert {m: v for m, v in offenders.items() if v} == {}


def test_ruff_is_clean() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "exchange", "tests", "bench"],
        capture_output=True,
        text=True,
        cwd=PACKAGE.parent,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_strict_is_clean() -> None:
    """mypy --strict on the files of pyproject.toml's [tool.mypy]: the package, the tests and the benches."""
    proc = subprocess.run([sys.executable, "-m", "mypy"], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_import_contracts_hold() -> None:
    """The layers and the "adapters never touch SQL" rule of pyproject.toml's [tool.importlinter]."""
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint)], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_no_module_is_over_500_lines() -> None:
    sizes = {m: len(p.read_text().splitlines()) for m, p in ((m, _path(m)) for m in MODULES)}
    assert {m: n for m, n in sizes.items() if n > 500} == {}


def _path(module: str) -> Path:
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    return path if path.exists() else PACKAGE.parent / module.replace(".", "/") / "__init__.py"
