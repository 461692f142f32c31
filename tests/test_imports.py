"""What `import infosam_hf` does to a process (registers the Adapter with PEFT, nothing else), and the shape of the
package's import graph (no circles)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import infosam_hf

PACKAGE = os.path.dirname(infosam_hf.__file__)
ROOT = os.path.dirname(PACKAGE)

# Function-level imports that close a circle in the full import graph, each with its reason (module, imported).
DEFERRED_ON_PURPOSE: dict[tuple[str, str], str] = {
    # InfoSAMModel owns its I/O as a transformers model does (save_pretrained / from_pretrained / push_to_hub), while
    # the card, loading and Hub layers build on the model class: each is imported inside the one method using it.
    ("infosam_hf.modeling", "infosam_hf.model_card"): "InfoSAMModel.save_pretrained writes the model card",
    ("infosam_hf.modeling", "infosam_hf.loading"): "InfoSAMModel.from_pretrained resolves Hub ids and the base",
    ("infosam_hf.modeling", "infosam_hf.hub"): "InfoSAMModel.push_to_hub",
}


def run_python(code: str) -> dict:
    """`code` in a fresh interpreter importing this checkout; it prints one JSON line, returned parsed."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_loads_only_the_adapter_registration_and_every_public_name_resolves():
    result = run_python(
        "import json, sys\n"
        "import infosam_hf\n"
        "heavy = ['infosam_hf.trainer', 'infosam_hf.hub', 'infosam_hf.export', 'infosam_hf.modeling',\n"
        "         'infosam_hf.data', 'transformers.trainer']\n"
        "loaded = [m for m in heavy if m in sys.modules]\n"
        "from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING\n"
        "adapter = PEFT_TYPE_TO_CONFIG_MAPPING.get('INFOSAM_BOTTLENECK_ADAPTER')\n"
        "registered = adapter is infosam_hf.BottleneckAdapterConfig\n"
        "missing = [n for n in infosam_hf.__all__ if getattr(infosam_hf, n, None) is None]\n"
        "missing += [] if callable(infosam_hf.hub.push_to_hub) else ['hub']  # a submodule, as before: loaded on use\n"
        "namespace = {}\n"
        "exec('from infosam_hf import *', namespace)\n"
        "print(json.dumps(dict(loaded=loaded, registered=registered, missing=missing,\n"
        "                      star=sorted(set(infosam_hf.__all__) - set(namespace)))))\n"
    )
    assert result == {"loaded": [], "registered": True, "missing": [], "star": []}


def test_the_names_type_checkers_see_are_the_public_names():
    tree = ast.parse(open(os.path.join(PACKAGE, "__init__.py")).read())
    checked = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    assert set(infosam_hf.__all__) == {"BottleneckAdapterConfig", *infosam_hf._LAZY_NAMES}
    typed = {alias.asname or alias.name for node in ast.walk(checked) if isinstance(node, ast.ImportFrom)
             for alias in node.names}
    assert typed | {"BottleneckAdapterConfig"} == set(infosam_hf.__all__)
    lazy = {node.names[0].name: node.module for node in ast.walk(checked) if isinstance(node, ast.ImportFrom)}
    assert all(infosam_hf._LAZY_NAMES[name] == module for name, module in lazy.items())


def test_importing_any_module_of_infosam_hf_registers_no_exit_hook_and_export_stays_the_function():
    result = run_python(
        "import atexit, importlib, json, pkgutil\n"
        "hooks, register = [], atexit.register\n"
        "def recording(function, *args, **kwargs):\n"
        "    hooks.append(f'{getattr(function, \"__module__\", \"\")}.{getattr(function, \"__qualname__\", \"\")}')\n"
        "    return register(function, *args, **kwargs)\n"
        "atexit.register = recording\n"
        "from infosam_hf.export import export as function  # the submodule first: Python sets it on the package\n"
        "import infosam_hf\n"
        "from infosam_hf import export\n"
        "for module in pkgutil.walk_packages(infosam_hf.__path__, 'infosam_hf.'):\n"
        "    importlib.import_module(module.name)\n"
        "print(json.dumps(dict(hooks=[hook for hook in hooks if hook.startswith('infosam_hf')],\n"
        "                      export=[export is function, infosam_hf.export is function])))\n"
    )
    assert result == {"hooks": [], "export": [True, True]}


# ------------------------------------------------------------------------------------------- import graph


def _modules() -> dict[str, str]:
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                parts = os.path.relpath(os.path.join(folder, name[:-3]), ROOT).split(os.sep)
                found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = os.path.join(folder, name)
    return found


def _imports(module: str, path: str, known: set[str]) -> dict[str, set[str]]:
    """{infosam_hf module that `module` imports: where}, where is "" for import time (module level and class bodies;
    `if TYPE_CHECKING:` not) and the dotted name of each function that imports it in its body
    ("InfoSAMModel.save_pretrained"). `from pkg import x` imports pkg and, where x is a submodule, pkg.x; the
    importer's own parent packages are loaded before it and not counted."""
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found: dict[str, set[str]] = {}

    def add(target: str, where: str) -> None:
        if target in known and target != module and not module.startswith(target + "."):
            found.setdefault(target, set()).add(where)

    def visit(node, scope: tuple[str, ...], in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, (*scope, child.name), in_function or not isinstance(child, ast.ClassDef))
                continue
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            where = ".".join(scope) if in_function else ""
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, where)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                add(target, where)
                for alias in child.names:
                    add(f"{target}.{alias.name}", where)
            visit(child, scope, in_function)

    visit(ast.parse(open(path, encoding="utf-8").read()), (), False)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state, stack = [], {}, []

    def walk(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            walk(node)
    return cycles


def _graph(inside_functions: bool) -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {m for m, where in _imports(name, path, set(modules)).items() if inside_functions or "" in where}
        for name, path in modules.items()
    }


def test_the_module_level_import_graph_has_no_cycles():
    graph = _graph(inside_functions=False)
    assert {"infosam_hf.tuners", "infosam_hf.models"} <= set(graph) and graph["infosam_hf"] == {"infosam_hf.tuners"}
    assert "infosam_hf.config" in graph["infosam_hf.modeling"]  # the scan sees modeling's own imports
    assert {"infosam_hf.modeling", "infosam_hf.model_card"} <= graph["infosam_hf.loading"]
    assert _cycles(graph) == []


def test_imports_inside_functions_close_no_cycle_unless_listed_with_a_reason():
    graph = _graph(inside_functions=True)
    for edge in DEFERRED_ON_PURPOSE:
        graph[edge[0]].discard(edge[1])
    assert _cycles(graph) == [], "break the cycle, or list its deferred import in DEFERRED_ON_PURPOSE with why"


def test_the_model_imports_its_io_layers_only_inside_its_methods():
    """modeling reaches model_card, loading and hub only from inside the three InfoSAMModel methods that need them
    (they import modeling at import time: the other way round would be a circle)."""
    modules = _modules()
    io_layers = {"infosam_hf.model_card", "infosam_hf.loading", "infosam_hf.hub"}
    found = _imports("infosam_hf.modeling", modules["infosam_hf.modeling"], set(modules))
    assert {m: where for m, where in found.items() if m in io_layers} == {
        "infosam_hf.model_card": {"InfoSAMModel.save_pretrained"},
        "infosam_hf.loading": {"InfoSAMModel.from_pretrained"},
        "infosam_hf.hub": {"InfoSAMModel.push_to_hub"},
    }
