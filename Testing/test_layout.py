"""The extension's structure: what Slicer's build and module loader rely on, and the
architecture rule that the library never imports Qt."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("BrainImageNetAD", "BrainImageNetTraining")
LIBRARY = ROOT / "BrainImageNetAD" / "BrainImageNetADLib"
#: What each part of the library may import from the others: its packages by concern and its
#: top-level modules. Nothing imports a part that is not listed here for it.
ALLOWED = {
    "core": set(),
    "preprocessing": {"core"},
    "model": {"core"},
    "explain": {"core", "preprocessing", "model"},
    "pipeline": {"core", "preprocessing", "model", "explain"},
    "case_process": {"core", "pipeline"},
    "cohort": {"core", "preprocessing", "model", "explain", "pipeline"},
    "viewer": {"core", "preprocessing", "model", "explain", "pipeline", "case_process"},
    "cli": {"core", "preprocessing", "model", "explain", "pipeline", "cohort", "viewer"},
}
PACKAGES = ("core", "preprocessing", "model", "explain", "cohort", "viewer")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_top_level_cmake_declares_a_slicer_extension() -> None:
    text = (ROOT / "CMakeLists.txt").read_text()
    for key in (
        "EXTENSION_HOMEPAGE",
        "EXTENSION_CATEGORY",
        "EXTENSION_CONTRIBUTORS",
        "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL",
        "EXTENSION_SCREENSHOTURLS",
    ):
        assert re.search(rf"set\({key} \S", text), key
    assert "find_package(Slicer REQUIRED)" in text
    for module in MODULES:
        assert f"add_subdirectory({module})" in text


@pytest.mark.parametrize("module", MODULES)
def test_every_file_the_module_cmake_lists_exists_and_every_library_file_is_listed(module: str) -> None:
    folder = ROOT / module
    text = (folder / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", module)
    assert "slicerMacroBuildScriptedModule" in text
    listed = set(re.findall(r"^\s+(\S+\.(?:py|png|ui))\s*$", text, flags=re.MULTILINE))
    for name in listed:
        assert (folder / name).is_file(), name
    library = {str(p.relative_to(folder).as_posix()) for p in (folder / f"{module}Lib").rglob("*.py")}
    assert library <= listed, sorted(library - listed)


@pytest.mark.parametrize("module", MODULES)
def test_module_file_follows_the_scripted_module_conventions(module: str) -> None:
    tree = ast.parse((ROOT / module / f"{module}.py").read_text())
    classes = {node.name: [ast.unparse(b) for b in node.bases] for node in tree.body if isinstance(node, ast.ClassDef)}
    assert classes[module] == ["ScriptedLoadableModule"]
    assert "ScriptedLoadableModuleWidget" in classes[f"{module}Widget"]
    assert classes[f"{module}Logic"] == ["ScriptedLoadableModuleLogic"]
    assert classes[f"{module}Test"] == ["ScriptedLoadableModuleTest"]


def test_libraries_never_import_qt_and_ad_never_imports_training() -> None:
    gui = {"qt", "ctk", "PythonQt", "qSlicerBaseQTCore", "slicer.app"}
    for path in LIBRARY.rglob("*.py"):
        imports = _imports(path)
        assert not imports & gui, (path.name, imports & gui)
        assert not imports & {"BrainImageNetTrainingLib", "BrainImageNetBench"}, path.name
    for path in (ROOT / "BrainImageNetTraining" / "BrainImageNetTrainingLib").glob("*.py"):
        assert not _imports(path) & {*gui, "BrainImageNetBench"}, path.name


def test_extensions_index_entry_has_the_catalog_fields_and_matches_the_cmake_metadata() -> None:
    """``BrainImageNetAD.json`` is the description file Slicer's ExtensionsIndex lists extensions
    with (schema slicer-extension-catalog-entry v1.0.2: ``$schema``, ``category`` and ``scm_url``
    required; no other keys than the schema's)."""
    import json

    entry = json.loads((ROOT / "BrainImageNetAD.json").read_text())
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies"}
    allowed |= {"dicom_support_rule", "build_subdirectory", "enabled", "tier"}
    assert {"$schema", "category", "scm_url"} <= set(entry) <= allowed
    assert entry["$schema"].startswith(
        "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-"
    )
    assert isinstance(entry["build_dependencies"], list) and 1 <= entry["tier"] <= 5
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert f'set(EXTENSION_CATEGORY "{entry["category"]}")' in cmake
    assert re.search(r'set\(EXTENSION_HOMEPAGE "' + re.escape(entry["scm_url"]), cmake)
    depends = re.search(r'set\(EXTENSION_DEPENDS "([^"]*)"\)', cmake).group(1).split()
    assert depends == entry["build_dependencies"]


def _library_parts_imported(path: Path) -> set[str]:
    """The parts of the library (a package by concern or a top-level module) that ``path``
    imports, relative or absolute; the package's own ``__version__`` is not a part."""
    rel = path.relative_to(LIBRARY)
    package = ["BrainImageNetADLib", *rel.parts[:-1]]
    targets: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            names = [node.module] if node.module else [alias.name for alias in node.names]
            targets += [".".join([*base, name]) for name in names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("BrainImageNetADLib"):
            names = [alias.name for alias in node.names] if node.module == "BrainImageNetADLib" else [""]
            targets += [f"{node.module}.{name}".rstrip(".") for name in names]
        elif isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names if alias.name.startswith("BrainImageNetADLib.")]
    return {t.split(".")[1] for t in targets if len(t.split(".")) > 1 and t.split(".")[1] != "__version__"}


def test_library_parts_import_only_in_the_allowed_directions() -> None:
    parts = set()
    for path in LIBRARY.rglob("*.py"):
        rel = path.relative_to(LIBRARY)
        if rel.name == "__init__.py" and len(rel.parts) == 1:
            continue
        part = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        parts.add(part)
        assert part in ALLOWED, f"{rel} belongs to no part of the library that ALLOWED names"
        wrong = _library_parts_imported(path) - ALLOWED[part] - {part}
        assert not wrong, f"{rel} ({part}) imports {sorted(wrong)}"
    assert parts == set(ALLOWED)


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_names_its_modules_and_exports_names_that_exist(package: str) -> None:
    """Every module of a package is named in its docstring, and every name it exports resolves
    (importing the package itself imports none of its modules)."""
    import importlib

    module = importlib.import_module(f"BrainImageNetADLib.{package}")
    for path in (LIBRARY / package).glob("*.py"):
        if path.stem != "__init__":
            assert f"``{path.stem}``" in module.__doc__, (package, path.stem)
    assert module.__all__
    for name in module.__all__:
        assert getattr(module, name) is not None, (package, name)
    with pytest.raises(AttributeError):
        _ = module.no_such_name


def test_importing_the_packages_imports_neither_numpy_nor_torch() -> None:
    """The packages hand on their names lazily: the Slicer module and the command line's parser
    import them before the heavy run-time packages are needed (or installed)."""
    import subprocess
    import sys

    code = "import sys\n"
    code += "".join(f"import BrainImageNetADLib.{package}\n" for package in PACKAGES)
    code += "print(sorted({'numpy', 'torch'} & set(sys.modules)))"
    env = {"PYTHONPATH": str(ROOT / "BrainImageNetAD"), "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=120)
    assert out.stdout.strip() == "[]"
