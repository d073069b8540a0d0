"""The wire protocol between a hospital (client/) and the server (server/).

Every name a message between them carries is defined here once, and each
message has a type with `to_record` (what the sender puts on the wire) and
`from_record` (what the receiver reads back, checked: a peer's message is
hostile input, and a malformed one is a ProtocolError that names the record,
the field and what is wrong). `to_record` writes exactly the records medfed
has always sent (same names, same order, same value types), so the bytes on
the wire are unchanged.

Messages (message type: content records):
- `query.hello` (server -> site; `Identity` back): `identity` = site, sites,
  and the site's certificate when the study has grants;
- `query.examples` (SecAgg+ only; `Examples` back): `examples` =
  num-examples, and the site's `status`;
- `train` (server -> site): `arrays` (the global model), `config`
  (server-round, from Flower's strategy), optionally `peers` (`PeerShares`:
  peers' ciphertext) and `keys` (`KeyMessages`: grants delivered, the
  certificates involved, the grants asked for); `TrainReply` back: `arrays`,
  `status` (`Status`), optionally `shared` (`SharedImages`) and `grants`
  (sealed grants by grantee), and `metrics` (`TrainMetrics`);
- `evaluate`: `EvaluateReply` back, `metrics` = num-examples and the scores.
A reply that failed at the site carries only its `status` with `error`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

# -- message types ------------------------------------------------------------------
TRAIN = "train"
EVALUATE = "evaluate"
HELLO_ACTION = "hello"  # the ClientApp's @app.query(...) name
EXAMPLES_ACTION = "examples"
HELLO = f"query.{HELLO_ACTION}"
EXAMPLES = f"query.{EXAMPLES_ACTION}"

# -- the records of a message ----------------------------------------------------------
ARRAYS = "arrays"  # the model (ArrayRecord)
CONFIG = "config"  # Flower's train/evaluate config (ConfigRecord)
METRICS = "metrics"  # a reply's numbers (MetricRecord)
STATUS = "status"  # which site replied, and its error (ConfigRecord)
SHARED = "shared"  # a train reply's ciphertext (ConfigRecord)
GRANTS = "grants"  # a train reply's sealed grants, by grantee (ConfigRecord)
PEERS = "peers"  # a train message's peers' ciphertext (ConfigRecord)
KEYS = "keys"  # a train message's key management (ConfigRecord)
IDENTITY = "identity"  # a hello reply (ConfigRecord)
EXAMPLES_RECORD = "examples"  # an examples reply (MetricRecord)

# -- fields -----------------------------------------------------------------------------
SERVER_ROUND = "server-round"  # in `config` (Flower's strategies put it there)
SITE = "site"  # in `status` and `identity`
SITES = "sites"  # in `identity`: of how many
CERTIFICATE = "certificate"  # in `identity`
ERROR = "error"  # in `status`
STATUS_PEERS = "peers"  # in `status`: the peers whose images the site decrypted
PEER_IMAGES = "peer-images"  # in `status`: how many of each
SHARED_IMAGES_FIELD = "images"  # in `shared`
SHARED_LABELS_FIELD = "labels"  # in `shared`
REQUEST_VERSION = "request-version"  # in `keys`: seal grants of this key version ...
REQUEST_GRANTEES = "request-grantees"  # ... to these grantees (comma-separated)
CERT_PREFIX = "cert/"  # in `keys`: cert/<identity> -> its certificate (PEM)
GRANT_PREFIX = "grant/"  # in `keys`: grant/<grantor>/<version> -> a sealed grant

# metrics
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
TRAIN_S = "train-s"
ENCRYPT_S = "encrypt-s"
DECRYPT_S = "decrypt-s"
RECON_MSE = "recon-mse"
RECON_PSNR = "recon-psnr"
RECON_SSIM = "recon-ssim"
SHARED_IMAGES = "shared-images"
CLIPPED_METRIC = "secagg-clipped"  # SecAgg+: weighted model values beyond the clipping range

# a train reply's metrics: name -> (lowest, highest) it may be; recon-* only with shares.
# Counts and seconds must be finite; what a site measured (its loss, the reconstruction)
# may be NaN or infinite, an honest report (a diverged loss, an exact PSNR) that the
# round record shows as such.
REPLY_METRICS = {
    NUM_EXAMPLES: (0, 2**31),
    ENCRYPT_S: (0.0, 1e7),
    TRAIN_S: (0.0, 1e7),
    DECRYPT_S: (0.0, 1e7),
    TRAIN_LOSS: (-math.inf, math.inf),
}
SHARE_METRICS = {
    RECON_MSE: (0.0, math.inf),
    RECON_PSNR: (-math.inf, math.inf),
    RECON_SSIM: (-1.0, 1.0),
    SHARED_IMAGES: (0, 2**31),
}
MEASURED = {TRAIN_LOSS, RECON_MSE, RECON_PSNR, RECON_SSIM}

_IDENTITY_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_PEER_KEY = re.compile(r"site-(?P<site>\d{1,6})-(?P<part>images|labels)")
_GRANT_KEY = re.compile(rf"grant/(?P<grantor>{_IDENTITY_NAME})/(?P<version>\d{{1,9}})")
_CERT_KEY = re.compile(rf"cert/(?P<name>{_IDENTITY_NAME})")


class ProtocolError(ValueError):
    """A message that does not follow the protocol (names the record and field)."""


def peer_key(site: int, part: str) -> str:
    """The `peers` record's name of a peer's images or labels container."""
    return f"site-{site}-{part}"


def grant_key(grantor: str, version: int) -> str:
    return f"{GRANT_PREFIX}{grantor}/{version}"


def cert_key(identity: str) -> str:
    return f"{CERT_PREFIX}{identity}"


def _int(value, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"{where} is {str(value)[:40]!r}, not an integer")
    return value


def _record(content: RecordDict, name: str, kind: type):
    record = content.get(name)
    if not isinstance(record, kind):
        what = "missing" if record is None else f"a {type(record).__name__}"
        raise ProtocolError(f"the {name!r} record is {what}, not a {kind.__name__}")
    return record


# -- status ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Status:
    """Which site a reply is from; its error instead of a crash; under grants, whose
    images it decrypted and how many (`peer_images`, by peer site)."""

    site: int
    error: str | None = None
    peer_images: Mapping[int, int] = field(default_factory=dict)

    def to_record(self) -> ConfigRecord:
        record = ConfigRecord({SITE: self.site})
        if self.error is not None:
            record[ERROR] = self.error
        if self.peer_images:
            peers = sorted(self.peer_images)
            record[STATUS_PEERS] = peers
            record[PEER_IMAGES] = [self.peer_images[j] for j in peers]
        return record

    @classmethod
    def from_record(cls, record) -> Status:
        if not isinstance(record, ConfigRecord):
            raise ProtocolError(f"the {STATUS!r} record is missing")
        site = _int(record.get(SITE), f"{STATUS}.{SITE}")
        error = record.get(ERROR)
        peer_images: dict[int, int] = {}
        if STATUS_PEERS in record:
            peers, counts = record[STATUS_PEERS], record.get(PEER_IMAGES)
            if not isinstance(peers, list) or not isinstance(counts, list):
                raise ProtocolError(f"{STATUS}.{STATUS_PEERS} and {PEER_IMAGES} must be lists")
            if len(peers) != len(counts):
                raise ProtocolError(f"{len(peers)} peers but {len(counts)} image counts")
            for j, n in zip(peers, counts, strict=True):
                peer_images[_int(j, f"{STATUS}.{STATUS_PEERS}")] = _int(
                    n, f"{STATUS}.{PEER_IMAGES}"
                )
        return cls(site, str(error) if error else None, peer_images)


# -- hello and examples ---------------------------------------------------------------------
@dataclass(frozen=True)
class Identity:
    """A hello reply: which site this node is, of how many, and its certificate."""

    site: int
    sites: int
    certificate: bytes | None = None

    def to_record(self) -> RecordDict:
        record = ConfigRecord({SITE: self.site, SITES: self.sites})
        if self.certificate is not None:
            record[CERTIFICATE] = self.certificate
        return RecordDict({IDENTITY: record})

    @classmethod
    def from_record(cls, content: RecordDict) -> Identity:
        record = content.get(IDENTITY)
        if not isinstance(record, ConfigRecord):
            raise ProtocolError(f"its hello reply has no {IDENTITY!r} record")
        values = {}
        for key in (SITE, SITES):
            value = record.get(key)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ProtocolError(
                    f"its identity's {key!r} is {str(value)[:40]!r}, not an integer"
                )
            values[key] = value
        certificate = record.get(CERTIFICATE)
        if certificate is not None and not isinstance(certificate, bytes):
            raise ProtocolError(f"its identity's certificate is a {type(certificate).__name__}")
        return cls(values[SITE], values[SITES], certificate)


@dataclass(frozen=True)
class Examples:
    """An examples reply (SecAgg+): the number of images the site trains on."""

    site: int
    num_examples: int

    def to_record(self) -> RecordDict:
        return RecordDict(
            {
                EXAMPLES_RECORD: MetricRecord({NUM_EXAMPLES: self.num_examples}),
                STATUS: Status(self.site).to_record(),
            }
        )

    @classmethod
    def from_record(cls, content: RecordDict) -> Examples:
        status = Status.from_record(content.get(STATUS))
        record = _record(content, EXAMPLES_RECORD, MetricRecord)
        return cls(status.site, _int(record.get(NUM_EXAMPLES), f"{EXAMPLES_RECORD}.{NUM_EXAMPLES}"))


# -- what a train message carries besides the model --------------------------------------------
@dataclass
class KeyMessages:
    """The key management in one train message (all optional): grants delivered to
    the site, certificates of the identities involved, and the grants the server asks
    the site to seal."""

    delivered: dict[tuple[str, int], bytes] = field(default_factory=dict)  # (grantor, v) -> grant
    certificates: dict[str, bytes] = field(default_factory=dict)  # identity -> PEM
    request_version: int | None = None
    request_grantees: tuple[str, ...] = ()

    def to_record(self) -> ConfigRecord:
        """The `keys` record: the request and its grantees' certificates first, then
        each grant delivered with its grantor's certificate."""
        record = ConfigRecord()
        if self.request_version is not None:
            record[REQUEST_VERSION] = self.request_version
            record[REQUEST_GRANTEES] = ",".join(self.request_grantees)
            for grantee in self.request_grantees:
                record[cert_key(grantee)] = self.certificates[grantee]
        for (grantor, version), blob in self.delivered.items():
            record[grant_key(grantor, version)] = blob
            record[cert_key(grantor)] = self.certificates[grantor]
        return record

    @classmethod
    def from_record(cls, record) -> KeyMessages:
        keys = cls()
        if record is None:
            return keys
        if not isinstance(record, ConfigRecord):
            raise ProtocolError(f"the {KEYS!r} record is a {type(record).__name__}")
        for name, value in record.items():
            if name in (REQUEST_VERSION, REQUEST_GRANTEES):
                continue
            if name.startswith(GRANT_PREFIX):
                match = _GRANT_KEY.fullmatch(name)
                if match is None:
                    raise ProtocolError(f"{KEYS}: {name[:80]!r} is not grant/<grantor>/<version>")
                version = int(match["version"])
                keys.delivered[(match["grantor"], version)] = _bytes(value, f"{KEYS}.{name}")
            elif name.startswith(CERT_PREFIX):
                match = _CERT_KEY.fullmatch(name)
                if match is None:
                    raise ProtocolError(f"{KEYS}: {name[:80]!r} is not cert/<identity>")
                keys.certificates[match["name"]] = _bytes(value, f"{KEYS}.{name}")
            else:
                raise ProtocolError(f"{KEYS}: unknown field {name[:80]!r}")
        if REQUEST_VERSION in record:
            keys.request_version = _int(record[REQUEST_VERSION], f"{KEYS}.{REQUEST_VERSION}")
            grantees = record.get(REQUEST_GRANTEES)
            if not isinstance(grantees, str):
                raise ProtocolError(f"{KEYS}.{REQUEST_GRANTEES} is missing or not a string")
            keys.request_grantees = tuple(grantees.split(","))
        return keys


def _bytes(value, where: str) -> bytes:
    if not isinstance(value, bytes):
        raise ProtocolError(f"{where} is a {type(value).__name__}, not bytes")
    return value


@dataclass
class PeerShares:
    """The `peers` record: each peer's images and labels containers of the last round."""

    shares: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # peer -> (images, labels)

    def to_record(self) -> ConfigRecord:
        record = ConfigRecord()
        for j, (images_ct, labels_ct) in sorted(self.shares.items()):
            record[peer_key(j, SHARED_IMAGES_FIELD)] = images_ct
            record[peer_key(j, SHARED_LABELS_FIELD)] = labels_ct
        return record

    @classmethod
    def from_record(cls, record) -> PeerShares:
        if record is None:
            return cls()
        if not isinstance(record, ConfigRecord):
            raise ProtocolError(f"the {PEERS!r} record is a {type(record).__name__}")
        parts: dict[int, dict[str, bytes]] = {}
        for name, value in record.items():
            match = _PEER_KEY.fullmatch(name)
            if match is None:
                raise ProtocolError(f"{PEERS}: {name[:80]!r} is not site-<N>-images|labels")
            parts.setdefault(int(match["site"]), {})[match["part"]] = _bytes(
                value, f"{PEERS}.{name}"
            )
        shares = {}
        for j, part in parts.items():
            for want in (SHARED_IMAGES_FIELD, SHARED_LABELS_FIELD):
                if want not in part:
                    raise ProtocolError(f"{PEERS}: {peer_key(j, want)!r} is missing")
            shares[j] = (part[SHARED_IMAGES_FIELD], part[SHARED_LABELS_FIELD])
        return cls(shares)


# -- replies ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SharedImages:
    """What a site shares in a round: the containers and the reconstruction it measured."""

    images: bytes  # container of the shared images
    labels: bytes  # AES-GCM container of their labels
    count: int
    mse: float
    psnr: float
    ssim: float

    def to_record(self) -> ConfigRecord:
        return ConfigRecord({SHARED_IMAGES_FIELD: self.images, SHARED_LABELS_FIELD: self.labels})


def reply_metrics(metrics, *, shared: bool) -> dict[str, float]:
    """The numbers a train reply must carry, checked (ValueError names the metric):
    present, numbers, within bounds (a measurement may also be NaN)."""
    if not isinstance(metrics, MetricRecord):
        raise ValueError("no metrics record")
    wanted = {**REPLY_METRICS, **(SHARE_METRICS if shared else {})}
    out = {}
    for name, (low, high) in wanted.items():
        if name not in metrics:
            raise ValueError(f"metric {name!r} is missing")
        value = metrics[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"metric {name!r} is not a number")
        value = float(value)
        if not (low <= value <= high or (name in MEASURED and math.isnan(value))):
            raise ValueError(f"metric {name!r} = {value:g} is outside [{low:g}, {high:g}]")
        out[name] = value
    return out


@dataclass
class TrainReply:
    """A site's answer to a train message."""

    site: int
    arrays: ArrayRecord
    num_examples: int
    train_loss: float
    train_s: float
    encrypt_s: float
    decrypt_s: float
    shared: SharedImages | None = None
    peer_images: dict[int, int] = field(default_factory=dict)  # peer -> images decrypted
    grants: dict[str, bytes] = field(default_factory=dict)  # grantee -> sealed grant

    def metrics(self) -> MetricRecord:
        values = {
            NUM_EXAMPLES: self.num_examples,
            TRAIN_LOSS: self.train_loss,
            TRAIN_S: self.train_s,
            ENCRYPT_S: self.encrypt_s,
            DECRYPT_S: self.decrypt_s,
        }
        if self.shared is not None:
            s = self.shared
            values |= {RECON_MSE: s.mse, RECON_PSNR: s.psnr, RECON_SSIM: s.ssim}
            values[SHARED_IMAGES] = s.count
        return MetricRecord(values)

    def to_record(self) -> RecordDict:
        content = {
            ARRAYS: self.arrays,
            STATUS: Status(self.site, peer_images=self.peer_images).to_record(),
        }
        if self.shared is not None:
            content[SHARED] = self.shared.to_record()
        if self.grants:
            content[GRANTS] = ConfigRecord(self.grants)
        content[METRICS] = self.metrics()
        return RecordDict(content)

    @classmethod
    def from_record(cls, content: RecordDict) -> TrainReply:
        """A train reply, checked (its model's layout is the server's to check);
        a reply with an error status is a ProtocolError with that error."""
        status = Status.from_record(content.get(STATUS))
        if status.error:
            raise ProtocolError(status.error)
        arrays = _record(content, ARRAYS, ArrayRecord)
        try:
            values = reply_metrics(content.get(METRICS), shared=SHARED in content)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
        shared = None
        if SHARED in content:
            record = _record(content, SHARED, ConfigRecord)
            images, labels = record.get(SHARED_IMAGES_FIELD), record.get(SHARED_LABELS_FIELD)
            if not isinstance(images, bytes) or not isinstance(labels, bytes):
                raise ProtocolError("the reply's shared images are not bytes")
            shared = SharedImages(
                images,
                labels,
                int(values[SHARED_IMAGES]),
                values[RECON_MSE],
                values[RECON_PSNR],
                values[RECON_SSIM],
            )
        grants = {}
        if GRANTS in content:
            for grantee, blob in _record(content, GRANTS, ConfigRecord).items():
                grants[grantee] = _bytes(blob, f"{GRANTS}.{grantee}")
        return cls(
            site=status.site,
            arrays=arrays,
            num_examples=int(values[NUM_EXAMPLES]),
            train_loss=values[TRAIN_LOSS],
            train_s=values[TRAIN_S],
            encrypt_s=values[ENCRYPT_S],
            decrypt_s=values[DECRYPT_S],
            shared=shared,
            peer_images=dict(status.peer_images),
            grants=grants,
        )


@dataclass(frozen=True)
class EvaluateReply:
    """A site's answer to an evaluate message: its test images and scores on them
    (none when it has no test images)."""

    num_examples: int
    scores: Mapping[str, float] = field(default_factory=dict)

    def to_record(self) -> RecordDict:
        return RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: self.num_examples, **self.scores})})

    @classmethod
    def from_record(cls, content: RecordDict) -> EvaluateReply:
        record = dict(_record(content, METRICS, MetricRecord))
        n = _int(record.pop(NUM_EXAMPLES, None), f"{METRICS}.{NUM_EXAMPLES}")
        return cls(n, record)


# every record name and field above: no string of these is spelled out in client/ or server/
WIRE_NAMES = frozenset(
    value
    for name, value in dict(globals()).items()
    if name.isupper() and isinstance(value, str) and not name.startswith("_")
)
