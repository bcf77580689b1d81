"""Which Python the server user (`postgres` when we are root) runs Patroni with: probed as that user.

Standard library only (and SandboxError), so that `./run install` asks it cheaply:
`python -m sandbox.patroni_runtime` prints the command and exits 0, or exits 1 (then it builds PATRONI_RUNTIME).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from sandbox.cluster import SandboxError

# A Python with Patroni that the server user can run, built by `./run install` (as root) only when neither of the
# first two ways below works (e.g. our .venv's interpreter lives under /root, which that user cannot read).
PATRONI_RUNTIME = Path(os.environ.get("PG_RUNBOOKS_PATRONI_RUNTIME", "/opt/pg-runbooks/patroni"))


@functools.cache
def python_for(user: str | None) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """A Python the server user can run with Patroni importable, probed as that user, in order: ours; the system's
    of the same minor version with our site-packages (isolated from the system's own packages); the runtime
    `./run install` builds (PATRONI_RUNTIME). (argv prefix, extra environment)."""
    if user is None:
        return (sys.executable,), ()
    system = shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}", path="/usr/bin:/usr/local/bin")
    ways: list[tuple[tuple[str, ...], tuple[tuple[str, str], ...]]] = [((sys.executable,), ())]
    if system:
        ways.append(((system, "-S"), (("PYTHONPATH", sysconfig.get_paths()["purelib"]),)))
    ways.append(((str(PATRONI_RUNTIME / "bin" / "python"),), ()))
    for argv, env in ways:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            probe = subprocess.run(["runuser", "-u", user, "--", *argv, "-c", "import patroni"], capture_output=True,
                                   cwd="/", env={**os.environ, **dict(env)}, timeout=60)
            if probe.returncode == 0:
                return argv, env
    raise SandboxError(f"the {user} user cannot run Patroni: not with {sys.executable} (unreadable by it?), not "
                       f"with the system Python and our packages, and there is no runtime at {PATRONI_RUNTIME}: run "
                       "./run install as root (it builds that runtime)")


if __name__ == "__main__":  # ./run install: exit 0 when the server user can run Patroni, else 1 (build the runtime)
    try:
        print(" ".join(python_for("postgres" if os.geteuid() == 0 else None)[0]))
    except SandboxError as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
