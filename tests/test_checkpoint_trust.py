"""Whom a checkpoint is trusted from, and that everything read back from one is
validated as hostile (docs/SECURITY.md).

The key that signs a run's checkpoints lives in the operator's key store, not in
the run folder: whoever can write the folder cannot sign. A checkpoint signed
by another key (another operator, an older medfed that kept its key in the
folder, a forger) is refused unless the operator accepts it on purpose with
`--trust-checkpoint`; even then, and even when the signature verifies, the
manifest's fields, the strategy state, the archive digests and the arrays are
checked against fixed types and bounds before anything is used.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import secrets
import stat
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAdam, FedAvgM

from server.archive import Archive
from server.checkpoint import CheckpointError, CheckpointStore, restore_strategy
from server.results import ResultWriter
from study.config import Study
from study.schema import SchemaError, append_jsonl, dumps
from study.task import build_model

ROOT = Path(__file__).resolve().parent.parent


def model_arrays(seed: int = 0) -> ArrayRecord:
    torch.manual_seed(seed)
    return ArrayRecord(build_model("xray").state_dict())


def template() -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in model_arrays().items()}


@pytest.fixture
def keys(tmp_path, monkeypatch) -> Path:
    """The operator's key store for this test (never the real home)."""
    home = tmp_path / "operator-keys"
    monkeypatch.setenv("MEDFED_KEY_HOME", str(home))
    return home


@pytest.fixture
def run(tmp_path, keys) -> tuple[Study, CheckpointStore]:
    """A finished 2-round study's checkpoints, signed with the operator's key."""
    out = tmp_path / "run"
    study = Study(out_dir=str(out), num_sites=2, min_sites=1, num_rounds=2)
    store = CheckpointStore(out, study)
    strategy = FedAdam(eta=0.1)
    strategy.m_t = {k: np.full(a.shape, 0.5, np.float32) for k, a in template().items()}
    store.save(1, model_arrays(), strategy, {1: ("a" * 64, "b" * 64)})
    store.save(2, model_arrays(1), strategy, {1: ("c" * 64, "d" * 64)})
    return study, store


def manifest_of(store: CheckpointStore, rnd: int) -> dict:
    return json.loads((store.dir / f"round-{rnd}.json").read_text())


def write_signed(store: CheckpointStore, rnd: int, doc: dict, blob: bytes | None = None) -> None:
    """Write a manifest (and arrays) signed with the operator's own key: what
    the checks below refuse, they refuse whatever the signature says."""
    if blob is not None:
        (store.dir / f"round-{rnd}.npz").write_bytes(blob)
        doc["arrays_sha256"] = hashlib.sha256(blob).hexdigest()
    doc["hmac"] = store._mac(doc)
    (store.dir / f"round-{rnd}.json").write_text(json.dumps(doc))


def forge(store: CheckpointStore, rnd: int, key: bytes, **changes) -> None:
    """The attack of issue 26: plant arrays, put a key of one's own where an
    older medfed kept it (server/checkpoint.key), recompute sha256 and HMAC."""
    npz, js = store.dir / f"round-{rnd}.npz", store.dir / f"round-{rnd}.json"
    with np.load(npz, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    planted = {
        k: (np.full_like(a, 0.5) if np.issubdtype(a.dtype, np.floating) else a)
        for k, a in arrays.items()
    }
    buf = io.BytesIO()
    np.savez(buf, **planted)
    blob = buf.getvalue()
    npz.write_bytes(blob)
    key_file = store.dir.parent / "server" / "checkpoint.key"
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_bytes(key)
    doc = json.loads(js.read_text())
    doc.update(changes)
    doc["arrays_sha256"] = hashlib.sha256(blob).hexdigest()
    body = dumps({k: v for k, v in doc.items() if k != "hmac"}).encode()
    doc["hmac"] = hmac.new(key, body, hashlib.sha256).hexdigest()
    js.write_text(json.dumps(doc))


# -- where the key lives ---------------------------------------------------------------
def test_the_key_lives_in_the_operators_key_store_not_in_the_run_folder(run, keys):
    study, store = run
    out = store.dir.parent
    key_files = [p for p in keys.iterdir() if p.is_file()]
    assert len(key_files) == 1
    key = key_files[0].read_bytes()
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert stat.S_IMODE(key_files[0].stat().st_mode) == 0o600
    for path in out.rglob("*"):  # the run folder holds no copy of the key
        assert not path.is_file() or key not in path.read_bytes(), path
    assert not (out / "server" / "checkpoint.key").exists()
    from server.keystore import key_id

    assert key_files[0].name == "checkpoint.key"
    assert manifest_of(store, 2)["key_id"] == key_id(key)
    assert store.load(2, template()).round == 2


def test_the_key_store_defaults_to_the_users_config_directory(tmp_path, monkeypatch):
    from server.keystore import key_home

    monkeypatch.delenv("MEDFED_KEY_HOME", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert key_home() == tmp_path / "xdg" / "medfed" / "keys"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert key_home() == tmp_path / "home" / ".config" / "medfed" / "keys"
    monkeypatch.setenv("MEDFED_KEY_HOME", str(tmp_path / "k"))
    assert key_home() == tmp_path / "k"


def test_a_key_store_inside_the_run_folder_or_open_to_others_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "run"
    study = Study(out_dir=str(out), num_sites=2, min_sites=1)
    monkeypatch.setenv("MEDFED_KEY_HOME", str(out / "keys"))
    with pytest.raises(CheckpointError, match="inside the run folder"):
        CheckpointStore(out, study).save(1, model_arrays(), FedAvgM(), {})
    shared = tmp_path / "shared-keys"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("MEDFED_KEY_HOME", str(shared))
    with pytest.raises(CheckpointError, match="writable by others"):
        CheckpointStore(out, study).save(1, model_arrays(), FedAvgM(), {})


# -- whose checkpoint ---------------------------------------------------------------------
def test_a_forged_checkpoint_with_a_replaced_key_is_refused(run):
    """Issue 26, finding 1: replace the key, plant arrays, re-sign: refused,
    whether the forger names its own key id, the operator's, or none."""
    study, store = run
    attacker = secrets.token_bytes(32)
    operator_id = manifest_of(store, 2).get("key_id")
    forge(store, 2, attacker)
    with pytest.raises(CheckpointError, match=r"round-2\.json.*--trust-checkpoint"):
        store.load(2, template())
    forge(store, 2, attacker, key_id=operator_id)  # claims the operator's key: HMAC fails
    with pytest.raises(CheckpointError, match=r"round-2\.json"):
        store.load(2, template())
    doc = manifest_of(store, 2)
    del doc["key_id"]
    (store.dir / "round-2.json").write_text(json.dumps(doc))
    forge(store, 2, attacker)  # as an older medfed wrote it: key in the folder
    with pytest.raises(CheckpointError, match=r"checkpoint\.key"):
        store.load(2, template())


def test_a_forged_checkpoint_stops_the_resume_before_anything_is_rewritten(run):
    study, store = run
    out = store.dir.parent
    for rnd in (1, 2):
        append_jsonl(out / "rounds.jsonl", round_line(rnd))
    forge(store, 2, secrets.token_bytes(32))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    writer = ResultWriter(out, study.replace(resume=True, num_rounds=3))
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        writer.resume(template(), Archive(out / "archive"))
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_trust_checkpoint_accepts_a_foreign_checkpoint_and_re_signs_it(run, tmp_path, monkeypatch):
    study, store = run
    monkeypatch.setenv("MEDFED_KEY_HOME", str(tmp_path / "other-operator"))
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        store.load(2, template())
    ckpt = store.load(2, template(), trust=True)
    assert ckpt.round == 2 and ckpt.warning and "trust" in ckpt.warning
    np.testing.assert_array_equal(
        next(iter(ckpt.model.values())), next(iter(model_arrays(1).values())).numpy()
    )
    again = store.load(2, template())  # re-signed with this operator's key
    assert again.warning is None
    # preflight checks (check_resumable) may verify without re-signing
    monkeypatch.setenv("MEDFED_KEY_HOME", str(tmp_path / "third"))
    store.load(2, template(), trust=True, resign=False)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        store.load(2, template())


def test_an_old_run_with_its_key_in_the_folder_is_accepted_only_on_trust(run):
    study, store = run
    out = store.dir.parent
    old_key = secrets.token_bytes(32)
    (out / "server").mkdir(exist_ok=True)
    (out / "server" / "checkpoint.key").write_bytes(old_key)
    doc = manifest_of(store, 2)
    del doc["key_id"]
    body = dumps({k: v for k, v in doc.items() if k != "hmac"}).encode()
    doc["hmac"] = hmac.new(old_key, body, hashlib.sha256).hexdigest()
    (store.dir / "round-2.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"checkpoint\.key.*--trust-checkpoint"):
        store.load(2, template())
    assert store.load(2, template(), trust=True).warning
    assert store.load(2, template()).round == 2


def test_trust_still_validates_everything(run, tmp_path, monkeypatch):
    study, store = run
    doc = manifest_of(store, 2)
    doc["strategy"]["__class__.injected"] = {"kind": "value", "value": 1}
    write_signed(store, 2, doc)
    monkeypatch.setenv("MEDFED_KEY_HOME", str(tmp_path / "other-operator"))
    with pytest.raises(CheckpointError, match="__class__"):
        store.load(2, template(), trust=True)


# -- everything read back is hostile ---------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "entry", "match"),
    [
        ("__class__.injected", {"kind": "value", "value": 1}, "__class__"),
        ("strategy.__dict__", {"kind": "value", "value": 1}, "__dict__"),
        ("current_arrays.keys", {"kind": "value", "value": 1}, "current_arrays.keys"),
        ("lr", {"kind": "value", "value": "EVIL"}, "'lr'"),
        ("eta", {"kind": "value", "value": "EVIL"}, "'eta'"),
        ("eta", {"kind": "float", "value": "nan"}, "'eta'"),
        ("fraction_train", {"kind": "float", "value": (5.0).hex()}, "'fraction_train'"),
        ("min_train_nodes", {"kind": "value", "value": True}, "'min_train_nodes'"),
        ("min_train_nodes", {"kind": "value", "value": -1}, "'min_train_nodes'"),
        ("eta", {"kind": "pickle", "value": "x"}, "'eta'"),
    ],
)
def test_strategy_state_outside_the_allow_list_is_refused(run, path, entry, match):
    study, store = run
    doc = manifest_of(store, 2)
    doc["strategy"][path] = entry
    write_signed(store, 2, doc)
    with pytest.raises(CheckpointError, match=rf"round-2\.json.*{match}") as info:
        ckpt = store.load(2, template())
        restore_strategy(FedAdam(), ckpt.strategy, ckpt.strategy_arrays)
    assert "round-2.json" in str(info.value)


def test_restore_strategy_never_walks_a_dotted_path():
    strategy = FedAdam()
    with pytest.raises(CheckpointError, match="__class__"):
        restore_strategy(strategy, {"__class__.injected": {"kind": "value", "value": 1}}, {})
    assert not hasattr(FedAdam, "injected")
    with pytest.raises(CheckpointError, match="'eta'"):
        restore_strategy(strategy, {"eta": {"kind": "value", "value": "EVIL"}}, {})
    assert strategy.eta == FedAdam().eta


@pytest.mark.parametrize("digest", ["/etc/passwd", "../x", "A" * 64, "a" * 63, "g" * 64, 7])
def test_a_planted_pending_share_digest_is_refused(run, digest):
    study, store = run
    doc = manifest_of(store, 2)
    doc["pending_share"] = {"1": [digest, "d" * 64]}
    write_signed(store, 2, doc)
    with pytest.raises(CheckpointError, match=r"round-2\.json.*pending_share"):
        store.load(2, template())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("round", 3),
        ("round", "2"),
        ("pending_share", {"9": ["c" * 64, "d" * 64]}),  # no such site
        ("model", ["features.0.weight"]),
        ("strategy", []),
        ("key_id", "../../etc"),
    ],
)
def test_manifest_fields_of_the_wrong_type_or_out_of_bounds_are_refused(run, field, value):
    study, store = run
    doc = manifest_of(store, 2)
    doc[field] = value
    write_signed(store, 2, doc)
    with pytest.raises(CheckpointError, match=rf"round-2\.json.*{field}"):
        store.load(2, template())


def _npy_header(descr: str, shape: tuple) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


@pytest.mark.parametrize("descr", ["|u1", "<f4"])
def test_an_array_header_claiming_2_to_the_62_elements_is_a_checkpoint_error(run, descr):
    study, store = run
    name = next(iter(template()))
    buf = io.BytesIO()
    with np.load(store.dir / "round-2.npz", allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    with zipfile.ZipFile(buf, "w") as zf:
        for k, a in arrays.items():
            if k == f"model/{name}":
                zf.writestr(f"{k}.npy", _npy_header(descr, (2**62,)) + b"\0" * 64)
            else:
                member = io.BytesIO()
                np.save(member, a)
                zf.writestr(f"{k}.npy", member.getvalue())
    write_signed(store, 2, manifest_of(store, 2), buf.getvalue())
    with pytest.raises(CheckpointError, match=rf"round-2\.npz.*model/{name}"):
        store.load(2, template())


@pytest.mark.parametrize("descr", ["|O", "<c16", "|V8", "<U4"])
def test_array_dtypes_outside_the_allowed_ones_are_refused(run, descr):
    study, store = run
    name, ref = next(iter(template().items()))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"model/{name}.npy", _npy_header(descr, ref.shape) + b"\0" * 64)
    write_signed(store, 2, manifest_of(store, 2), buf.getvalue())
    with pytest.raises(CheckpointError, match=r"round-2\.npz"):
        store.load(2, template())


BOMB = textwrap.dedent(
    """
    import io, resource, sys, time, zipfile
    from pathlib import Path
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from server.checkpoint import CheckpointError, CheckpointStore
    from study.config import Study

    out = Path(sys.argv[2])
    study = Study(out_dir=str(out), num_sites=2, min_sites=1)
    store = CheckpointStore(out, study)
    tmpl = {"w": np.zeros((2048, 1024), np.float32)}  # an 8 MiB model: the npz may be as large
    # a 1.5 GiB array of zeros, deflated to 7 MB
    n = 3 * 2**27
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (n,)})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("model/w.npy", "w", force_zip64=True) as fh:
            fh.write(header.getvalue())
            zeros = bytes(64 << 20)
            for _ in range(n * 4 // len(zeros)):
                fh.write(zeros)
    from flwr.app import Array, ArrayRecord
    from flwr.serverapp.strategy import FedAvg
    store.save(1, ArrayRecord({"w": Array(tmpl["w"])}), FedAvg(), {})
    import hashlib, json
    blob = buf.getvalue()
    (store.dir / "round-1.npz").write_bytes(blob)
    doc = json.loads((store.dir / "round-1.json").read_text())
    doc["arrays_sha256"] = hashlib.sha256(blob).hexdigest()
    doc["hmac"] = store._mac(doc)
    (store.dir / "round-1.json").write_text(json.dumps(doc))
    vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1])
    limit = vm * 1024 + (1 << 30)  # 1 GiB of address space beyond what is mapped now
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    t0 = time.perf_counter()
    try:
        store.load(1, tmpl)
    except CheckpointError as exc:
        print("refused", round(time.perf_counter() - t0, 3), len(blob), exc)
    except MemoryError:
        print("MemoryError", round(time.perf_counter() - t0, 3))
    else:
        print("loaded", round(time.perf_counter() - t0, 3))
    """
)


def test_an_npz_decompression_bomb_is_refused_quickly_under_a_memory_limit(tmp_path, keys):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-c", BOMB, str(ROOT), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    verdict, seconds, *rest = res.stdout.split()
    assert verdict == "refused", res.stdout
    assert float(seconds) < 2.0, res.stdout
    assert "round-1.npz" in res.stdout and "model/w" in res.stdout


# -- runtime keys ---------------------------------------------------------------------
def test_a_resume_may_change_rejoin_wait(run):
    study, store = run
    other = CheckpointStore(store.dir.parent, study.replace(rejoin_wait=5.0))
    assert other.load(2, template()).round == 2


def test_the_trust_flag_is_not_part_of_the_study_hash(run):
    study, store = run
    other = CheckpointStore(store.dir.parent, study.replace(trust_checkpoint=True))
    assert other.load(2, template()).round == 2


# -- results files read back on resume ---------------------------------------------------
def round_line(rnd: int) -> dict:
    return {"round": rnd, "sites": [], "totals": {}, "global": {}, "seconds": 1.0}


@pytest.mark.parametrize(
    ("name", "line", "match"),
    [
        ("rounds.jsonl", {**round_line(2), "round": "2"}, r"rounds\.jsonl, line 2.*round"),
        ("rounds.jsonl", {**round_line(2), "round": 2.5}, r"rounds\.jsonl, line 2.*round"),
        ("rounds.jsonl", {**round_line(2), "seconds": "slow"}, r"rounds\.jsonl, line 2.*seconds"),
        ("rounds.jsonl", {**round_line(2), "sites": {"a": 1}}, r"rounds\.jsonl, line 2.*sites"),
        ("phases.jsonl", {"holdout": 1.0}, r"phases\.jsonl, line 2.*round"),
        ("phases.jsonl", {"round": 2, "holdout": "x"}, r"phases\.jsonl, line 2.*holdout"),
    ],
)
def test_results_files_are_validated_when_a_run_resumes(run, name, line, match):
    study, store = run
    out = store.dir.parent
    good = round_line(1) if name == "rounds.jsonl" else {"round": 1, "holdout": 1.0}
    other = "phases.jsonl" if name == "rounds.jsonl" else "rounds.jsonl"
    append_jsonl(out / name, good)
    append_jsonl(out / name, line)
    for rnd in (1, 2):
        if other == "rounds.jsonl":
            append_jsonl(out / other, round_line(rnd))
        else:
            append_jsonl(out / other, {"round": rnd, "holdout": 1.0})
    writer = ResultWriter(out, study.replace(resume=True))
    with pytest.raises(SchemaError, match=match):
        writer.resume(template(), Archive(out / "archive"))


# -- the command line ----------------------------------------------------------------------
def test_trust_checkpoint_is_a_flag_of_every_command_that_resumes():
    from simulations.cli import build_parser
    from simulations.commands.run import load_study

    parser = build_parser()
    args = parser.parse_args(["run", "--resume", "--trust-checkpoint"])
    assert args.trust_checkpoint is True
    study = load_study(args.study, [], "/tmp/x", args.resume, args.trust_checkpoint)
    assert study.resume and study.trust_checkpoint
    for argv in (["deploy", "local"], ["deploy", "submit", "--superlink", "h:1", "--insecure"]):
        args = parser.parse_args([*argv, "--resume", "--trust-checkpoint"])
        assert args.resume and args.trust_checkpoint
    assert parser.parse_args(["run"]).trust_checkpoint is False


def _buildable() -> list[tuple[str, str]]:
    from server.strategy import build_strategy
    from study.config import STRATEGIES

    out = []
    for name in STRATEGIES:
        for dp in ("none", "client-fixed", "client-adaptive", "server-fixed"):
            try:
                build_strategy(Study(strategy=name, dp=dp, num_sites=4, min_sites=2))
            except (TypeError, ValueError):
                continue  # a combination the study refuses, or one build_strategy cannot make
            out.append((name, dp))
    return out


@pytest.mark.parametrize(("name", "dp"), _buildable())
def test_every_supported_strategys_state_round_trips_through_the_allow_list(
    tmp_path, keys, name, dp
):
    """The allow-list holds what the supported strategies really keep: their state,
    round state included (moments, momentum, current arrays, the adaptive clipping
    norm), is written, validated and restored onto a strategy fresh from the study."""
    from server.strategy import build_strategy

    out = tmp_path / "run"
    study = Study(out_dir=str(out), strategy=name, dp=dp, num_sites=4, min_sites=2)
    strategy = build_strategy(study)
    inner = getattr(strategy, "strategy", strategy)
    tmpl = template()
    fill = {k: np.full(a.shape, 0.25, a.dtype) for k, a in tmpl.items()}
    if hasattr(inner, "m_t"):  # FedOpt: as after a round
        inner.current_arrays, inner.m_t, inner.v_t = dict(fill), dict(fill), dict(fill)
    if hasattr(inner, "momentum_vector"):
        inner.current_arrays = ArrayRecord({k: torch.from_numpy(v) for k, v in fill.items()})
        inner.momentum_vector = list(fill.values())
    if dp == "client-adaptive":
        strategy.clipping_norm = 0.375
    store = CheckpointStore(out, study)
    store.save(1, model_arrays(), strategy, {})
    ckpt = store.load(1, tmpl)
    fresh = build_strategy(study)
    restore_strategy(fresh, ckpt.strategy, ckpt.strategy_arrays)
    fresh_inner = getattr(fresh, "strategy", fresh)
    if hasattr(inner, "m_t"):
        assert all(np.all(v == 0.25) for v in fresh_inner.v_t.values())
    if hasattr(inner, "momentum_vector"):
        assert len(fresh_inner.momentum_vector) == len(tmpl)
    if dp == "client-adaptive":
        assert fresh.clipping_norm == 0.375


# -- the resume paths: the preflight of `medfed run --resume` and the ServerApp ----------
def test_the_resume_preflight_refuses_a_forged_checkpoint(run):
    """`medfed run --resume` checks the last checkpoint before Ray starts
    (simulations.runner.check_resumable): the attack stops there, in one line."""
    from simulations.runner import check_resumable
    from simulations.supervise import explain

    study, store = run
    out = store.dir.parent
    for rnd in (1, 2):
        append_jsonl(out / "rounds.jsonl", round_line(rnd))
    forge(store, 2, secrets.token_bytes(32))
    with pytest.raises(CheckpointError) as info:
        check_resumable(study.replace(resume=True, num_rounds=3))
    line = explain(info.value)
    assert "round-2.json" in line and "--trust-checkpoint" in line and "\n" not in line


def test_a_trusted_resume_re_signs_and_says_so_in_a_warning_event(tmp_path, monkeypatch):
    """A run copied from another operator: refused; with --trust-checkpoint it
    continues, re-signed, with a `warning` progress event."""
    from loopback_grid import LoopbackGrid, run_loopback_study, small_study

    from client.client_app import build_client_app
    from server.progress import Events
    from simulations.runner import check_resumable

    monkeypatch.setenv("MEDFED_KEY_HOME", str(tmp_path / "their-keys"))
    study = small_study(tmp_path, monkeypatch, num_rounds=1)
    run_loopback_study(LoopbackGrid(build_client_app(study), study.num_sites), study)
    monkeypatch.setenv("MEDFED_KEY_HOME", str(tmp_path / "my-keys"))
    resumed = study.replace(resume=True, num_rounds=2)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        check_resumable(resumed)
    trusted = resumed.replace(trust_checkpoint=True)
    check_resumable(trusted)  # validates; the ServerApp re-signs
    events: list[dict] = []
    grid = LoopbackGrid(build_client_app(trusted), trusted.num_sites)
    rounds = run_loopback_study(grid, trusted, Events(None, events.append))
    assert [r.round for r in rounds] == [1, 2]
    warnings = [e for e in events if e["event"] == "warning"]
    assert len(warnings) == 1 and "round-1.json" in warnings[0]["message"]
    check_resumable(resumed)  # round 2 was written, and round 1 re-signed, with my key
    out = Path(study.out_dir)
    from server.keystore import KeyStore

    mine = KeyStore(tmp_path / "my-keys").signing_key(create=False)[0]
    assert {manifest_of(CheckpointStore(out, study), r)["key_id"] for r in (1, 2)} == {mine}


def test_the_resume_preflight_reads_rounds_jsonl_as_strictly_as_the_server(run):
    from simulations.runner import check_resumable

    study, store = run
    out = store.dir.parent
    append_jsonl(out / "rounds.jsonl", round_line(1))
    append_jsonl(out / "rounds.jsonl", {**round_line(2), "round": "2"})
    with pytest.raises(SchemaError, match=r"rounds\.jsonl, line 2: field 'round'"):
        check_resumable(study.replace(resume=True))


def test_the_test_suite_keeps_its_keys_out_of_the_home_directory(monkeypatch):
    """tests/conftest.py points MEDFED_KEY_HOME at a temporary folder for the session."""
    from server.keystore import key_home

    home = Path(os.environ["MEDFED_KEY_HOME"])
    assert key_home() == home.absolute() and home.name.startswith("medfed-test-keys-")
    monkeypatch.delenv("MEDFED_KEY_HOME")
    assert key_home() != home.absolute()  # the operator's own store is left alone
