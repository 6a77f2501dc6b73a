"""Ship only the Django-free part of ``connectors`` with the agent (protocol, base, built-ins)."""

from setuptools import setup
from setuptools.command.build_py import build_py

PURE_CONNECTOR_MODULES = {"__init__", "base", "dispatcher"}


class BuildPurePy(build_py):
    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        if package == "connectors":
            modules = [m for m in modules if m[1] in PURE_CONNECTOR_MODULES]
        if package == "agent":
            modules = [m for m in modules if m[1] != "setup"]
        return modules


setup(cmdclass={"build_py": BuildPurePy})
