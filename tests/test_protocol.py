"""study.protocol: the typed messages write exactly the records medfed has always sent
(byte for byte, serialized as Flower sends them), read them back, and refuse malformed
ones with an error naming the record and field."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto

from study import protocol
from study.protocol import (
    EvaluateReply,
    Examples,
    Identity,
    KeyMessages,
    PeerShares,
    ProtocolError,
    SharedImages,
    Status,
    TrainReply,
)


def wire(content: RecordDict) -> bytes:
    return recorddict_to_proto(content).SerializeToString(deterministic=True)


def arrays() -> ArrayRecord:
    return ArrayRecord({"w": Array(np.arange(6, dtype=np.float32).reshape(2, 3))})


def test_train_reply_is_the_record_sent_before_byte_for_byte():
    # Prepare: a reply with shares, peers' images and grants, and the literal record
    # the client app wrote before the protocol module existed
    model = arrays()
    shared = SharedImages(b"IMG", b"LAB", 4, 0.5, 33.0, 0.9)
    reply = TrainReply(
        site=2,
        arrays=model,
        num_examples=40,
        train_loss=0.25,
        train_s=1.5,
        encrypt_s=0.1,
        decrypt_s=0.2,
        shared=shared,
        peer_images={3: 4, 0: 4},
        grants={"site-1": b"G1"},
    )
    before = RecordDict(
        {
            "arrays": model,
            "status": ConfigRecord({"site": 2, "peers": [0, 3], "peer-images": [4, 4]}),
            "shared": ConfigRecord({"images": b"IMG", "labels": b"LAB"}),
            "grants": ConfigRecord({"site-1": b"G1"}),
            "metrics": MetricRecord(
                {
                    "num-examples": 40,
                    "train-loss": 0.25,
                    "train-s": 1.5,
                    "encrypt-s": 0.1,
                    "decrypt-s": 0.2,
                    "recon-mse": 0.5,
                    "recon-psnr": 33.0,
                    "recon-ssim": 0.9,
                    "shared-images": 4,
                }
            ),
        }
    )
    # Execute
    content = reply.to_record()
    # Assert: same records in the same order, same bytes; and it reads back as sent
    assert list(content.keys()) == list(before.keys())
    assert wire(content) == wire(before)
    back = TrainReply.from_record(content)
    assert back.site == 2 and back.shared == shared and back.peer_images == {0: 4, 3: 4}
    assert back.grants == {"site-1": b"G1"} and back.num_examples == 40


def test_plain_train_reply_has_no_optional_records():
    reply = TrainReply(2, arrays(), 10, 0.5, 1.0, 0.0, 0.0)
    content = reply.to_record()
    assert list(content.keys()) == ["arrays", "status", "metrics"]
    assert dict(content["status"]) == {"site": 2}
    assert set(content["metrics"].keys()) == set(protocol.REPLY_METRICS)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["metrics"].__delitem__("train-s"), "metric 'train-s' is missing"),
        (lambda c: c["metrics"].__setitem__("num-examples", -1), "'num-examples' = -1 is outside"),
        (lambda c: c["status"].__setitem__("site", "2"), "status.site is '2', not an integer"),
        (lambda c: c["status"].__setitem__("error", "boom"), "boom"),
        (lambda c: c.__delitem__("arrays"), "the 'arrays' record is missing"),
        (lambda c: c["shared"].__setitem__("images", "x"), "shared images are not bytes"),
        (lambda c: c["status"].__setitem__("peer-images", [1]), "2 peers but 1 image counts"),
    ],
)
def test_train_reply_refuses_a_malformed_record(change, message):
    shared = SharedImages(b"I", b"L", 1, 0.0, math.inf, 1.0)
    content = TrainReply(2, arrays(), 10, 0.5, 1.0, 0.0, 0.0, shared, {0: 1, 1: 1}).to_record()
    change(content)
    with pytest.raises(ProtocolError, match=message.replace("(", r"\(")):
        TrainReply.from_record(content)


def test_a_measurement_may_be_nan_a_count_may_not():
    content = TrainReply(0, arrays(), 10, math.nan, 1.0, 0.0, 0.0).to_record()
    assert math.isnan(TrainReply.from_record(content).train_loss)
    content["metrics"]["train-s"] = math.nan
    with pytest.raises(ProtocolError, match="'train-s' = nan is outside"):
        TrainReply.from_record(content)


def test_key_messages_write_the_grants_record_as_the_server_did():
    # the broker's order: the request, its grantees' certificates, then each grant
    # delivered followed by its grantor's certificate
    keys = KeyMessages(
        delivered={("site-0", 1): b"GRANT0", ("site-2", 1): b"GRANT2"},
        certificates={"site-1": b"C1", "auditor": b"CA", "site-0": b"C0", "site-2": b"C2"},
        request_version=1,
        request_grantees=("auditor", "site-1"),
    )
    before = ConfigRecord()
    before["request-version"] = 1
    before["request-grantees"] = "auditor,site-1"
    before["cert/auditor"] = b"CA"
    before["cert/site-1"] = b"C1"
    before["grant/site-0/1"] = b"GRANT0"
    before["cert/site-0"] = b"C0"
    before["grant/site-2/1"] = b"GRANT2"
    before["cert/site-2"] = b"C2"
    record = keys.to_record()
    assert list(record.keys()) == list(before.keys())
    assert wire(RecordDict({"keys": record})) == wire(RecordDict({"keys": before}))
    back = KeyMessages.from_record(record)
    assert back.delivered == keys.delivered and back.request_version == 1
    assert back.request_grantees == ("auditor", "site-1") and back.certificates == keys.certificates


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"grant/site-0": b"x"}, "is not grant/<grantor>/<version>"),
        ({"grant/site-0/1": "text"}, "keys.grant/site-0/1 is a str, not bytes"),
        ({"cert/../x": b"x"}, "is not cert/<identity>"),
        ({"request-version": "1", "request-grantees": "a"}, "keys.request-version is '1'"),
        ({"request-version": 1}, "keys.request-grantees is missing"),
        ({"surprise": 1}, "unknown field 'surprise'"),
    ],
)
def test_key_messages_refuse_a_malformed_record(record, message):
    with pytest.raises(ProtocolError, match=message):
        KeyMessages.from_record(ConfigRecord(record))


def test_no_keys_record_is_no_key_messages():
    keys = KeyMessages.from_record(None)
    assert keys.delivered == {} and keys.request_version is None
    assert len(KeyMessages().to_record()) == 0


def test_peer_shares_round_trip_and_refuse_a_half_share():
    shares = PeerShares({2: (b"I2", b"L2"), 0: (b"I0", b"L0")})
    record = shares.to_record()
    assert list(record.keys()) == [
        "site-0-images",
        "site-0-labels",
        "site-2-images",
        "site-2-labels",
    ]
    assert PeerShares.from_record(record).shares == {0: (b"I0", b"L0"), 2: (b"I2", b"L2")}
    del record["site-2-labels"]
    with pytest.raises(ProtocolError, match="'site-2-labels' is missing"):
        PeerShares.from_record(record)
    with pytest.raises(ProtocolError, match="'site-x-images' is not site-<N>-images"):
        PeerShares.from_record(ConfigRecord({"site-x-images": b""}))


def test_identity_and_examples_are_the_records_sent_before():
    identity = Identity(1, 3, b"PEM")
    before = RecordDict({"identity": ConfigRecord({"site": 1, "sites": 3, "certificate": b"PEM"})})
    assert wire(identity.to_record()) == wire(before)
    assert Identity.from_record(before) == identity
    assert "certificate" not in Identity(1, 3).to_record()["identity"]
    bad = RecordDict({"identity": ConfigRecord({"site": True, "sites": 3})})
    with pytest.raises(ProtocolError, match="identity's 'site' is 'True', not an integer"):
        Identity.from_record(bad)
    with pytest.raises(ProtocolError, match="no 'identity' record"):
        Identity.from_record(RecordDict({}))

    examples = Examples(2, 17)
    before = RecordDict(
        {
            "examples": MetricRecord({"num-examples": 17}),
            "status": ConfigRecord({"site": 2}),
        }
    )
    assert wire(examples.to_record()) == wire(before)
    assert Examples.from_record(before) == examples


def test_evaluate_reply_round_trip():
    reply = EvaluateReply(12, {"accuracy": 0.75, "loss": 0.5})
    before = RecordDict(
        {"metrics": MetricRecord({"num-examples": 12, "accuracy": 0.75, "loss": 0.5})}
    )
    assert wire(reply.to_record()) == wire(before)
    assert EvaluateReply.from_record(before) == reply
    assert dict(EvaluateReply(0).to_record()["metrics"]) == {"num-examples": 0}


def test_status_error_record():
    record = Status(1, error="ValueError: x").to_record()
    assert dict(record) == {"site": 1, "error": "ValueError: x"}
    assert Status.from_record(record).error == "ValueError: x"


def test_wire_names_are_unique_and_complete():
    # each name once (two constants with one value would be one name typed twice)
    names = [
        value
        for key, value in vars(protocol).items()
        if key.isupper() and isinstance(value, str) and not key.startswith("_")
    ]
    assert "secagg-clipped" in protocol.WIRE_NAMES and "recon-psnr" in protocol.WIRE_NAMES
    assert set(protocol.REPLY_METRICS) | set(protocol.SHARE_METRICS) <= protocol.WIRE_NAMES
    # two names are shared on purpose (the examples query answers with an examples
    # record; status.peers names the peers as the peers record does); nothing else repeats
    repeated = sorted({n for n in names if names.count(n) > 1})
    assert repeated == ["examples", "peers"], repeated


# -- every wire name is spelled out only in study/protocol.py ------------------------------
ROOT = Path(__file__).resolve().parents[1]
RECORD_NAMES = {
    protocol.ARRAYS,
    protocol.CONFIG,
    protocol.METRICS,
    protocol.STATUS,
    protocol.SHARED,
    protocol.GRANTS,
    protocol.PEERS,
    protocol.KEYS,
    protocol.IDENTITY,
    protocol.EXAMPLES_RECORD,
}
# names with a hyphen, a slash or a dot cannot be anything but the protocol's
DISTINCT = {n for n in protocol.WIRE_NAMES if any(c in n for c in "-/.")}
PREFIXES = (protocol.GRANT_PREFIX, protocol.CERT_PREFIX)


def wire_literals(path: Path) -> list[str]:
    """Where `path` spells out a wire name: a string that is one of the distinct names
    (or starts with a key prefix), or a record name used as a key (subscript, .get(),
    `in`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            if text in DISTINCT or (text.startswith(PREFIXES) and len(text) < 40):
                found.append(f"{path.name}:{node.lineno}: {text!r}")
        keys = []
        if isinstance(node, ast.Subscript):
            keys = [node.slice]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("get", "pop") and node.args:
                keys = [node.args[0]]
        elif isinstance(node, ast.Compare) and isinstance(node.ops[0], (ast.In, ast.NotIn)):
            keys = [node.left]
        for key in keys:
            if isinstance(key, ast.Constant) and key.value in RECORD_NAMES:
                found.append(f"{path.name}:{node.lineno}: record {key.value!r}")
    return found


# words of the wire that are also fields of a file medfed writes: rounds.jsonl's site
# entries have `examples` and `peers`, a checkpoint manifest's entries `keys`
FILE_FIELDS = {
    "results.py": {"record 'examples'", "record 'peers'"},
    "checkpoint.py": {"record 'keys'"},
}
SOURCES = sorted([*(ROOT / "client").glob("*.py"), *(ROOT / "server").glob("*.py")])


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_wire_name_is_spelled_out_in_client_or_server(path):
    """The issue's done-when: no record key string appears in client/ or server/;
    they name every record and field through study.protocol."""
    allowed = FILE_FIELDS.get(path.name, set()) if path.parent.name == "server" else set()
    found = [f for f in wire_literals(path) if f.split(": ", 1)[1] not in allowed]
    assert found == []


def test_the_check_finds_a_spelled_out_name(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        'x = reply.content["status"]\ny = {"recon-psnr": 1}\nz = f"grant/{a}/{b}"\n'
        'w = "metrics" in content\nv = msg.content.get("keys")\nok = "site"\n'
    )
    assert sorted(wire_literals(sample)) == [
        "sample.py:1: record 'status'",
        "sample.py:2: 'recon-psnr'",
        "sample.py:3: 'grant/'",
        "sample.py:4: record 'metrics'",
        "sample.py:5: record 'keys'",
    ]
