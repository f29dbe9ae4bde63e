"""Installs the project as one import root, `cxr`.

The repository keeps the layout users asked for (pipeline/, components/, dataprep/,
kubeflow/, serving/ at the top), but installed they must not claim generic
top-level names: `kubeflow` is the namespace of Kubeflow's own SDKs. So each
folder is mapped under `cxr` (`cxr.pipeline`, `cxr.components`, ...), and code
refers to component modules by those dotted paths.
"""
import os

from setuptools import setup

FOLDERS_UNDER_CXR = ("pipeline", "components", "dataprep", "kubeflow", "serving")


def _packages_in(folder, dotted_root):
    packages = {}
    for directory, _, files in os.walk(folder):
        if "__init__.py" in files:
            relative = os.path.relpath(directory, folder)
            suffix = "" if relative == "." else "." + relative.replace(os.sep, ".")
            packages[dotted_root + suffix] = directory
    return packages


def _package_dirs():
    package_dirs = _packages_in("cxr", "cxr")
    for folder in FOLDERS_UNDER_CXR:
        package_dirs.update(_packages_in(folder, f"cxr.{folder}"))
    return package_dirs


PACKAGE_DIRS = _package_dirs()

setup(
    name="cxr-pipeline",
    version="0.1.0",
    description="TFX / Kubeflow pipeline for a four-class chest X-ray classifier",
    python_requires=">=3.10,<3.11",
    packages=sorted(PACKAGE_DIRS),
    package_dir=PACKAGE_DIRS,
    # Data files the code reads at run time; the pipeline image installs the project without -e.
    package_data={"cxr.dataprep": ["mappings/*.yaml"], "cxr.pipeline": ["schema/*.pbtxt"]},
    install_requires=[
        "tfx==1.16.0",
        "tensorflow==2.16.2",
        "apache-beam[gcp]==2.61.0",
        "pillow",
        "pyyaml",
        "requests",
        "scipy",
    ],
    entry_points={"console_scripts": ["cxr = cxr.cli:main"]},
)
