"""The Flower app bundle that `flwr run` submits: the medfed packages + pyproject.toml."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from deploy.errors import REPO_ROOT

APP_PACKAGES = ("encryption", "study", "client", "server", "simulations")


def default_app_dir() -> Path:
    """The medfed source folder (with pyproject.toml): this checkout, else the current folder."""
    for cand in (REPO_ROOT, Path.cwd()):
        if (cand / "pyproject.toml").is_file() and (cand / "client").is_dir():
            return cand
    raise FileNotFoundError(
        "no medfed source folder found (pyproject.toml + packages): pass --app DIR"
    )


def stage_app(src: str | Path, dest: str | Path) -> Path:
    """Copy the Flower app (pyproject.toml + packages) to `dest` for `flwr run`.

    Why not `flwr run .` on the checkout: flwr walks the whole folder (the
    virtual environment included: slow), and it rejects a `fab-exclude`
    pattern that matches no file, which happens for folders that .gitignore
    already hides (runs/, data/, deploy/certs/). The staged copy holds only
    the app's packages, and the patterns that match nothing are dropped.
    """
    import tomllib

    from deploy.flwr_internals import build_pathspec

    src, dest = Path(src), Path(dest)
    pyproject = src / "pyproject.toml"
    if not pyproject.is_file():
        raise FileNotFoundError(
            f"{pyproject} not found: --app must be the medfed source folder (with pyproject.toml)"
        )
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for pkg in APP_PACKAGES:
        if (src / pkg).is_dir():
            shutil.copytree(
                src / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
    text = pyproject.read_text()
    conf = tomllib.loads(text).get("tool", {}).get("flwr", {}).get("app", {})
    files = [p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()]
    for key in ("fab-exclude", "fab-include"):
        patterns = conf.get(key)
        if not patterns:
            continue
        keep = [p for p in patterns if any(build_pathspec([p]).match_file(f) for f in files)]
        if keep != patterns:
            line = re.search(rf"^{key}\s*=.*$", text, flags=re.M)
            if line is None:  # multi-line list: leave it, flwr will say what is wrong
                continue
            new = f"{key} = {json.dumps(keep)}" if keep else ""
            text = text[: line.start()] + new + text[line.end() :]
    (dest / "pyproject.toml").write_text(text)
    return dest
