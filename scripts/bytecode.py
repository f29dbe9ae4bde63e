"""The folders of .venv whose modules make demo's processes import, so bootstrap compiles only those.

`uv pip sync --compile-bytecode` compiles all ~20,900 modules of the lock (about 33 s on two cores);
the demo's processes import about 8,700 of them, and TFX's imports compile again in every process
where .pyc files cannot be written (PYTHONDONTWRITEBYTECODE, as on CI). bootstrap.sh compiles the
folders listed in scripts/bytecode-folders.txt; `make test` compiles the rest, which the tests import.

  python scripts/bytecode.py list VENV > scripts/bytecode-folders.txt   # after make demo in a VENV
                                                                         # synced without bytecode
  python scripts/bytecode.py compile VENV                               # what bootstrap.sh runs
"""
import compileall
import multiprocessing
import os
import sys

LIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bytecode-folders.txt")


def site_packages(venv: str) -> str:
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return os.path.join(venv, "lib", version, "site-packages")


def compiled_folders(site: str):
    """Folders (relative to site-packages) holding a __pycache__ with a .pyc of this Python."""
    tag = sys.implementation.cache_tag
    for folder, names, files in os.walk(site):
        if os.path.basename(folder) == "__pycache__" and any(tag in name for name in files):
            yield os.path.relpath(os.path.dirname(folder), site)


def listed_folders():
    with open(LIST, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def compile_listed(site: str) -> int:
    """Compiles the listed folders' modules (not their subfolders) on every core; folders gone are skipped."""
    folders = [os.path.join(site, folder) for folder in listed_folders()]
    modules = [os.path.join(folder, name) for folder in folders if os.path.isdir(folder)
               for name in os.listdir(folder) if name.endswith(".py")]
    with multiprocessing.Pool() as pool:
        failed = sum(not ok for ok in pool.imap_unordered(_compile, modules, chunksize=64))
    # A module that does not compile (a Python 2 leftover in some package) fails only if imported.
    print(f"bytecode: {len(modules) - failed} modules compiled, {failed} not", file=sys.stderr)
    return failed


def _compile(path: str) -> bool:
    return bool(compileall.compile_file(path, quiet=2))


def main(argv) -> int:
    command, venv = argv[1], argv[2]
    site = site_packages(venv)
    if command == "list":
        print("# written by scripts/bytecode.py list (see there); one folder per line, relative to site-packages")
        print("\n".join(sorted(set(compiled_folders(site)))))
        return 0
    if command == "compile":
        compile_listed(site)
        return 0
    raise SystemExit(f"unknown command {command!r}: list or compile")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
