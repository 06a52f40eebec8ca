"""docs/architecture.md matches the code: its module map names every module of the package and only modules that
exist (or are marked planned), and the files uploaded as remote code import only each other."""

import ast
import re

from helpers import ROOT

from vaswani_hf.hub import CODE_FILES

ARCHITECTURE = ROOT / "docs" / "architecture.md"
PACKAGE = ROOT / "vaswani_hf"


def mapped_modules() -> dict[str, bool]:
    """{module file or folder named in a table row of the module map: whether the row marks it planned}."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text[text.index("## Modules of `vaswani_hf/`") : text.index("## Remote code")]
    rows = re.findall(r"^\| `([\w/]+(?:\.py)?)`( \(planned\))? \|", section, re.M)
    return {name: bool(planned) for name, planned in rows}


def test_the_module_map_names_every_module_and_only_modules_that_exist():
    mapped = mapped_modules()
    present = {path.name for path in PACKAGE.glob("*.py")} | {
        f"{path.name}/" for path in PACKAGE.iterdir() if path.is_dir() and not path.name.startswith(("_", "."))
    }
    assert not present - set(mapped), f"modules docs/architecture.md does not name: {sorted(present - set(mapped))}"
    missing = sorted(name for name, planned in mapped.items() if not planned and name not in present)
    assert not missing, f"docs/architecture.md names modules that do not exist (mark them planned?): {missing}"
    landed = sorted(name for name, planned in mapped.items() if planned and name in present)
    assert not landed, f"docs/architecture.md still marks these planned, but they exist: {landed}"


def test_the_remote_code_files_import_only_each_other_and_are_the_ones_documented():
    text = ARCHITECTURE.read_text(encoding="utf-8")
    remote = text[text.index("## Remote code") :]
    for name in CODE_FILES:
        assert f"`{name}`" in remote, f"docs/architecture.md's remote code section does not name {name}"
        tree = ast.parse((PACKAGE / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                assert f"{node.module}.py" in CODE_FILES, f"{name} imports .{node.module}, which is not uploaded"
            imported = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                imported = [node.module]
            assert not [m for m in imported if m.split(".")[0] == "vaswani_hf"], f"{name} imports the package"
