"""Installs the project as one import root, `cxr`.

The repository keeps the layout users asked for (pipeline/, components/, dataprep/,
kubeflow/, serving/ at the top), but installed they must not claim generic
top-level names: `kubeflow` is the namespace of Kubeflow's own SDKs. So each
folder is mapped under `cxr` (`cxr.pipeline`, `cxr.components`, ...), and code
refers to component modules by those dotted paths.
"""
import glob
import os

from setuptools import setup

FOLDERS_UNDER_CXR = ("pipeline", "components", "dataprep", "dicom", "kubeflow", "serving", "monitoring")
# Data files the code reads at run time, by package; the pipeline image installs the built wheel.
PACKAGE_DATA = {"cxr.dataprep": ["mappings/*.yaml"], "cxr.pipeline": ["schema/*.pbtxt"]}


class MissingFolder(SystemExit):
    """A folder the package maps is absent: the build stops instead of leaving its modules out."""


def _packages_in(folder, dotted_root):
    if not os.path.isfile(os.path.join(folder, "__init__.py")):
        raise MissingFolder(f"setup.py: {os.path.abspath(folder)}/__init__.py is missing; the package maps "
                            f"{folder}/ to {dotted_root} (a build context or checkout without it?)")
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


def _check_package_data(package_dirs):
    for package, patterns in PACKAGE_DATA.items():
        for pattern in patterns:
            if not glob.glob(os.path.join(package_dirs[package], pattern)):
                raise MissingFolder(f"setup.py: no {pattern} under {package_dirs[package]}/ (data of {package})")


PACKAGE_DIRS = _package_dirs()
_check_package_data(PACKAGE_DIRS)

setup(
    name="cxr-pipeline",
    version="0.1.0",
    description="TFX / Kubeflow pipeline for a four-class chest X-ray classifier",
    python_requires=">=3.10,<3.11",
    packages=sorted(PACKAGE_DIRS),
    package_dir=PACKAGE_DIRS,
    package_data=PACKAGE_DATA,
    install_requires=[
        "tfx==1.16.0",
        "tensorflow==2.16.2",
        "apache-beam[gcp]==2.61.0",
        "pillow",
        "pydicom==3.0.2",
        "pylibjpeg==2.1.0",
        "pylibjpeg-openjpeg==2.3.0",
        "pylibjpeg-libjpeg==2.2.0",
        "pylibjpeg-rle==2.0.0",
        "pyjpegls==1.4.0",
        "pyyaml",
        "requests",
        "scipy",
    ],
    entry_points={"console_scripts": ["cxr = cxr.cli:entry"]},
)
