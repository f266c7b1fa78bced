"""Build step: the shipped models go into the wheel as package data.

The models stay where they live in the repository, checkpoints/<name>/ (files flat); which ones
are shipped, and which is the default, is said once in charlm/shipped.json. Building a wheel
copies each into charlm/shipped/<name>/ inside it, only the files a model is used with (not its
training log, nor anything a user trained into checkpoints/); a source distribution carries
checkpoints/<name>/ so that a wheel can be built from it. An editable install copies nothing:
charlm then finds the models in the checkout's checkpoints/.

The tune table corpora/cipai.json, which `charlm generate --form <tune>` reads, goes into the
wheel as charlm/cipai.json the same way (charlm.cipai.table_path finds either).
"""

import json
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

MANIFEST = Path("charlm", "shipped.json")
FILES = ("model.safetensors", "config.json", "vocab.json", "lines.txt", "MODEL_CARD.md")
NEEDED = ("model.safetensors", "config.json", "vocab.json")
MAX_MODEL_BYTES = 25 * 10**6  # a shipped model, and all of them together, stay small
MAX_TOTAL_BYTES = 60 * 10**6
TUNE_TABLE = Path("corpora", "cipai.json")


def shipped_files() -> list[Path]:
    """checkpoints/<name>/<file> of every shipped model, checked for completeness and size."""
    names = json.loads(MANIFEST.read_text(encoding="utf-8"))["models"]
    files, total = [], 0
    for name in names:
        folder = Path("checkpoints", name)
        missing = [f for f in NEEDED if not (folder / f).is_file()]
        if missing:
            raise SystemExit(f"error: shipped model {folder} has no {missing[0]} (named in {MANIFEST})")
        mine = [folder / f for f in FILES if (folder / f).is_file()]
        size = sum(f.stat().st_size for f in mine)
        if size > MAX_MODEL_BYTES:
            raise SystemExit(f"error: shipped model {folder} is {size:,} bytes, over {MAX_MODEL_BYTES:,}")
        files, total = files + mine, total + size
    if total > MAX_TOTAL_BYTES:
        raise SystemExit(f"error: the shipped models are {total:,} bytes together, over {MAX_TOTAL_BYTES:,}")
    return files


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib, "charlm", "shipped")
        shutil.rmtree(target, ignore_errors=True)  # no model left over from an earlier build
        for source in shipped_files():
            dest = target / source.relative_to("checkpoints")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
        if not TUNE_TABLE.is_file():
            raise SystemExit(f"error: the tune table {TUNE_TABLE} is missing")
        shutil.copyfile(TUNE_TABLE, Path(self.build_lib, "charlm", TUNE_TABLE.name))


class Sdist(sdist):
    def make_release_tree(self, base_dir, files) -> None:
        super().make_release_tree(base_dir, [*files, *map(str, shipped_files()), str(TUNE_TABLE)])


setup(cmdclass={"build_py": BuildPy, "sdist": Sdist})
