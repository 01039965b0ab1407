"""The extension's structure: what Slicer's build and module loader rely on, and the
architecture rule that the library never imports Qt."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("BrainImageNetAD", "BrainImageNetTraining")


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
    library = {str(p.relative_to(folder)) for p in (folder / f"{module}Lib").glob("*.py")}
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
    for path in (ROOT / "BrainImageNetAD" / "BrainImageNetADLib").glob("*.py"):
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
