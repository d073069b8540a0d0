"""deploy/flwr_internals.py: the one module through which medfed uses private flwr names."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from deploy import flwr_internals

ROOT = Path(__file__).resolve().parent.parent
PRIVATE = re.compile(r"flwr\.(supercore|proto|supernode|superlink|superexec|cli)\b")


@pytest.fixture
def unchecked(monkeypatch):
    """flwr_internals as in a fresh process: the version not checked yet."""
    monkeypatch.setattr(flwr_internals, "_checked", [])
    monkeypatch.delenv(flwr_internals.UNCHECKED_ENV, raising=False)


def test_every_listed_name_exists_in_the_pinned_flwr(unchecked):
    assert flwr_internals.check_version() == flwr_internals.WRITTEN_FOR
    for name, (module, attr, _) in flwr_internals.NAMES.items():
        value = flwr_internals.resolve(name)
        mod = sys.modules[module]
        assert value is (mod if attr is None else getattr(mod, attr)), name


def test_another_flwr_version_says_what_to_port(unchecked):
    with pytest.raises(flwr_internals.FlwrInternalsError) as err:
        flwr_internals.check_version("1.43.0")
    text = str(err.value)
    assert "flwr 1.43.0 is installed" in text and "flwr 1.42.0" in text
    assert "Install flwr==1.42.0" in text and "WRITTEN_FOR" in text
    # one line per flwr module: its names and the medfed code that uses them
    assert "  flwr.supercore.retry: RetryInvoker [deploy/executor.py]" in text
    assert "  flwr.supernode.start_client_internal: (the module) [deploy/supernode.py" in text
    assert len(re.findall(r"^  flwr\.", text, flags=re.M)) == len(
        {m for m, _, _ in flwr_internals.NAMES.values()}
    )


def test_a_mismatch_stops_the_first_use(unchecked, monkeypatch):
    monkeypatch.setattr(flwr_internals, "installed_version", lambda: "2.0.0")
    with pytest.raises(flwr_internals.FlwrInternalsError, match="flwr 2.0.0 is installed"):
        flwr_internals.resolve("RetryInvoker")
    with pytest.raises(flwr_internals.FlwrInternalsError, match="flwr 2.0.0 is installed"):
        flwr_internals.__getattr__("HeartbeatSender")  # what `from ... import` calls
    # the opt-in tries the names unported
    monkeypatch.setenv(flwr_internals.UNCHECKED_ENV, "1")
    assert flwr_internals.resolve("RetryInvoker").__name__ == "RetryInvoker"


def test_a_missing_name_names_module_and_user(unchecked, monkeypatch):
    names = dict(flwr_internals.NAMES)
    names["gone"] = ("flwr.supercore.retry", "NoSuchThing", "deploy/executor.py (Worker)")
    names["gone_module"] = ("flwr.supercore.no_such_module", None, "deploy/supernode.py")
    monkeypatch.setattr(flwr_internals, "NAMES", names)
    with pytest.raises(flwr_internals.FlwrInternalsError) as err:
        flwr_internals.resolve("gone")
    assert str(err.value).startswith("flwr 1.42.0: flwr.supercore.retry.NoSuchThing is gone")
    assert "port deploy/executor.py (Worker), which uses it" in str(err.value)
    with pytest.raises(flwr_internals.FlwrInternalsError, match="no_such_module is gone"):
        flwr_internals.resolve("gone_module")
    with pytest.raises(AttributeError, match="lists no flwr name 'unlisted'"):
        flwr_internals.resolve("unlisted")


def test_a_supernode_loop_without_what_the_launcher_patches_is_named(unchecked, monkeypatch):
    from flwr.supernode import start_client_internal as loop

    monkeypatch.delattr(loop, "pull_objects")
    with pytest.raises(flwr_internals.FlwrInternalsError, match="has no pull_objects; port"):
        flwr_internals.resolve("supernode_loop")


def test_importing_it_imports_no_flwr():
    code = "import sys, deploy.flwr_internals; print(sorted(m for m in sys.modules if m.startswith('flwr')))"
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stderr


def test_only_flwr_internals_names_private_flwr_modules_in_deploy():
    hits = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sorted((ROOT / "deploy").glob("*.py"))
        if path.name != "flwr_internals.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE.search(line)
    ]
    assert hits == []
