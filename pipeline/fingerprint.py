"""Which of the project's modules some code imports, and one digest of their sources.

Read from the sources (their import statements, wherever they are), importing no module
but the packages' __init__ files: the digest must not depend on what is loaded in the process.
A module that runs project code in a process of its own (`python -m cxr.serving.dev_server`) names
those modules in a module-level tuple of strings, SUBPROCESS_MODULES, followed as its imports are.
"""
import ast
import hashlib
import importlib.util
from typing import Dict, Iterable, Iterator

ROOT_PACKAGE = "cxr"


def imported_modules(roots: Iterable[str]) -> Dict[str, str]:
    """{module: source file} of `roots`, the project modules they import, and so on, with their packages."""
    found: Dict[str, str] = {}
    pending = list(roots)
    while pending:
        module = pending.pop()
        if module in found:
            continue
        found[module] = _source_file(module)
        pending += _packages_of(module)
        with open(found[module], encoding="utf-8") as f:
            tree = ast.parse(f.read(), found[module])
        pending += [*_project_imports(tree), *_subprocess_modules(tree, found[module])]
    return found


def digest(modules: Dict[str, str]) -> str:
    hasher = hashlib.sha256()
    for module in sorted(modules):
        hasher.update(module.encode() + b"\0")
        with open(modules[module], "rb") as f:
            hasher.update(f.read())
    return hasher.hexdigest()


def _project_imports(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if _in_project(alias.name))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _in_project(node.module or ""):
            for alias in node.names:  # `from package import module` or `from module import name`
                yield f"{node.module}.{alias.name}" if _is_module(f"{node.module}.{alias.name}") else node.module


SUBPROCESS_MODULES = "SUBPROCESS_MODULES"


def _subprocess_modules(tree: ast.Module, path: str) -> Iterator[str]:
    """The modules a module-level `SUBPROCESS_MODULES = ("cxr....", NAME)` names: string literals, or names of
    module-level string constants."""
    constants = {target.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
                 for target in node.targets if isinstance(target, ast.Name)
                 and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == SUBPROCESS_MODULES
                                                for t in node.targets):
            if not isinstance(node.value, (ast.Tuple, ast.List)):
                raise ValueError(f"{path}: {SUBPROCESS_MODULES} must be a tuple of module names")
            for element in node.value.elts:
                if isinstance(element, ast.Constant) and isinstance(element.value, str):
                    yield element.value
                elif isinstance(element, ast.Name) and element.id in constants:
                    yield constants[element.id]
                else:
                    raise ValueError(f"{path}: {SUBPROCESS_MODULES} holds {ast.unparse(element)}, not a module name "
                                     f"or a module-level string constant")


def _packages_of(module: str) -> Iterator[str]:
    parts = module.split(".")
    return (".".join(parts[:end]) for end in range(1, len(parts)))


def _in_project(module: str) -> bool:
    return module == ROOT_PACKAGE or module.startswith(ROOT_PACKAGE + ".")


def _is_module(name: str) -> bool:
    """Whether `name` is a module (of a package) rather than a name in a module; imports packages only."""
    parent = importlib.util.find_spec(name.rpartition(".")[0])
    if parent is None or parent.submodule_search_locations is None:
        return False
    return importlib.util.find_spec(name) is not None


def _source_file(module: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise ImportError(f"no Python source for {module}")
    return spec.origin
