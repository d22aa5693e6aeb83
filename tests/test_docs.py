"""Documentation habits: every public class carries a runnable example; the README quick start is real."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import necklace

ROOT = Path(__file__).resolve().parents[1]


def _public_classes() -> list[tuple[str, type]]:
    found = []
    for mod in pkgutil.walk_packages(necklace.__path__, "necklace."):
        if mod.name.endswith("__main__"):
            continue
        try:
            module = importlib.import_module(mod.name)
        except ImportError:
            if mod.name.startswith("necklace.integrations."):
                continue  # an adapter whose host library (an optional extra) is not installed
            raise
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if inspect.isclass(obj) and obj.__module__ == module.__name__:
                found.append((f"{module.__name__}.{name}", obj))
    return found


def test_every_public_class_has_a_runnable_example() -> None:
    classes = _public_classes()
    assert len(classes) >= 10
    missing = [name for name, cls in classes if ">>>" not in (cls.__doc__ or "")]
    assert not missing, f"public classes without a doctest example: {missing}"


def _readme_block(lang: str, after: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(after)
    m = re.compile(rf"```{lang}\n(.*?)```", re.S).search(text, start)
    assert m, f"no ```{lang} block after {after!r} in README.md"
    return m.group(1)


def test_readme_quick_start_output_is_real() -> None:
    code = _readme_block("python", "## Quick start")
    shown = _readme_block("text", "## Quick start")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert run.stdout.strip() == shown.strip()
    assert len(code.strip().splitlines()) <= 12


def test_readme_lists_every_registered_neck() -> None:
    text = (ROOT / "README.md").read_text()
    for name in necklace.list_necks():
        assert f"`{name}`" in text, f"README necks table lacks {name}"


def test_readme_names_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert "make demo" in text and "make test" in text
    assert "make test" in (ROOT / ".ci" / "run").read_text() or "make test" in (ROOT / "Makefile").read_text()
