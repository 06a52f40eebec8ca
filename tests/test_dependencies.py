"""pyproject.toml declares what the package imports: no runtime dependency declared and never used, no import left
undeclared, so the declarations cannot drift from the code."""

import ast
import importlib.util
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

from helpers import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

# Declared runtime dependencies the package uses through another library rather than by importing them:
# distribution -> (the module of that library which imports it, the name it imports).
USED_THROUGH = {
    "jinja2": ("huggingface_hub.repocard", "jinja2"),  # the model card: ModelCard.from_template
    "tensorboard": ("torch.utils.tensorboard", "tensorboard"),  # the recipes' report_to: tensorboard (the Trainer's)
}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def requirement_names(requirements: list[str]) -> set[str]:
    return {normalized(re.match(r"[A-Za-z0-9._-]+", requirement).group()) for requirement in requirements}


def imported_modules(source: str) -> set[str]:
    """Top-level names of the absolute imports in `source`, wherever they are (lazy imports in functions too)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_every_declared_dependency_is_imported_and_every_import_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    runtime = requirement_names(project["dependencies"])
    optional = set().union(*(requirement_names(extra) for extra in project["optional-dependencies"].values()))
    package_sources = (path.read_text(encoding="utf-8") for path in (ROOT / "vaswani_hf").rglob("*.py"))
    third_party = set().union(*map(imported_modules, package_sources)) - set(sys.stdlib_module_names) - {"vaswani_hf"}
    providers = packages_distributions()
    distributions = {module: {normalized(d) for d in providers.get(module, [module])} for module in third_party}
    imported = set().union(*distributions.values())

    unused = sorted(runtime - imported - set(USED_THROUGH))
    assert not unused, f"declared in pyproject.toml's dependencies but never imported by vaswani_hf: {unused}"
    undeclared = sorted(module for module, dists in distributions.items() if not dists & (runtime | optional))
    assert not undeclared, f"imported by vaswani_hf but declared nowhere in pyproject.toml: {undeclared}"
    for distribution, (module, name) in USED_THROUGH.items():
        assert distribution in runtime and distribution not in imported, f"{distribution}: update USED_THROUGH"
        library_source = Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8")
        assert name in imported_modules(library_source), f"{module} no longer imports {name} ({distribution})"
