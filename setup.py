"""Build step of the wheel: the shipped configs go inside the package.

``configs/*.py`` and ``configs/_base_/*.py`` (the source, used as they are in a checkout)
are copied to ``xtuner_llava_swap/shipped_configs/`` in the build, where
``xtuner-llava-swap list-cfg`` / ``copy-cfg`` find them after ``pip install``. Everything
else is in setup.cfg. An editable install reads ``configs/`` of the checkout instead.
"""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SOURCE = Path(__file__).resolve().parent / "configs"
TARGET = ("xtuner_llava_swap", "shipped_configs")


class BuildPyWithConfigs(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib).joinpath(*TARGET)
        for file in sorted(SOURCE.glob("*.py")) + sorted(SOURCE.glob("_base_/*.py")):
            destination = target / file.relative_to(SOURCE)
            self.mkpath(str(destination.parent))
            self.copy_file(str(file), str(destination))


setup(cmdclass={"build_py": BuildPyWithConfigs})
