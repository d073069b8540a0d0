"""The hospital as a Flower ClientApp: a thin adapter over client.site.Site.

Messages it answers:
- `query.hello`: which site this SuperNode is (its `partition-id`) and of how
  many (`num-partitions`), and its identity certificate when the study has
  grants: the server enrols sites by it;
- `train`: one round of local work (`Site.train_round`); the message may
  carry `peers` (peers' ciphertext) and `keys` (grants delivered, the
  certificates involved, grants asked for); the reply carries `arrays` (the
  model update), `metrics` (numbers only), `shared` (the ciphertext
  containers, when the study exchanges images) and `grants` (sealed);
- `evaluate`: the global model on the site's own test patients.
Every reply passes through `site_reply_mod`, which adds `status` (the site
id, and the error text instead of a crash, so the server can report which
site failed and why), and `transport_mod`, which unpacks a packed message
(study.transport: the model as one Array on the wire) and packs its reply.
Keys and encryptor weights stay in the site's state folder.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client import audit
from client.secagg import examples_reply, secure_aggregation_mod
from client.site import KeyMessages, Site
from study import transport
from study.config import Study
from study.task import build_model, evaluate


def _study(context: Context, study: Study | None) -> Study:
    return study or Study.from_mapping(dict(context.run_config), source="run config")


# A long-lived app process (medfed's deployment executor, deploy/executor.py)
# sets MEDFED_KEEP_SITES=1: a site's Site (decoded shard, keys) then serves every message
# of its run instead of being rebuilt per message. Keyed by run, study and node; only the
# current run's sites are kept. Off elsewhere (a simulation worker serves many sites).
_KEPT_SITES: dict[tuple, Site] = {}


def _site(context: Context, study: Study | None) -> Site:
    node = context.node_config
    identity = node.get("identity-dir")
    keep = os.environ.get("MEDFED_KEEP_SITES") == "1"
    key = (
        context.run_id,
        repr(sorted(dict(context.run_config).items())),
        repr(study),
        str(node["partition-id"]),
        str(node.get("num-partitions")),
        str(identity),
    )
    if keep and key in _KEPT_SITES:
        return _KEPT_SITES[key]
    study = _study(context, study)
    site = Site(
        study,
        int(node["partition-id"]),
        int(node.get("num-partitions", study.num_sites)),
        identity_dir=Path(str(identity)) if identity else None,
    )
    if keep:
        for old in [k for k in _KEPT_SITES if k[0] != context.run_id]:
            del _KEPT_SITES[old]
        _KEPT_SITES[key] = site
    return site


def _key_messages(record: ConfigRecord | None) -> KeyMessages:
    keys = KeyMessages()
    if record is None:
        return keys
    for name, value in record.items():
        if name.startswith("grant/"):
            _, grantor, version = name.split("/")
            keys.delivered[(grantor, int(version))] = value
        elif name.startswith("cert/"):
            keys.certificates[name.split("/", 1)[1]] = value
    if "request-version" in record:
        keys.request_version = int(record["request-version"])
        keys.request_grantees = tuple(str(record["request-grantees"]).split(","))
    return keys


def site_reply_mod(msg: Message, context: Context, call_next) -> Message:
    """A Flower mod: a handler's exception becomes an error status (which
    site, what failed, where) instead of a crashed app, and every train reply
    names its site."""
    site = int(context.node_config["partition-id"])
    try:
        with audit.site_scope(f"site-{site}"):
            reply = call_next(msg, context)
    except Exception as exc:  # noqa: BLE001 - reported per site in rounds.jsonl
        status = ConfigRecord({"site": site, "error": _describe(exc)})
        return Message(content=RecordDict({"status": status}), reply_to=msg)
    if msg.metadata.message_type.split(".")[0] == "train" and "status" not in reply.content:
        reply.content["status"] = ConfigRecord({"site": site})
    return reply


def transport_mod(msg: Message, context: Context, call_next) -> Message:
    """A Flower mod: a message the server packed (study.transport: one Array per
    ArrayRecord on the wire) is unpacked before any other mod or handler sees it,
    and the reply is packed the same way; a plain message gets a plain reply."""
    packed = msg.has_content() and transport.is_packed(msg.content)
    if packed:
        msg.content = transport.unpack(msg.content)
    reply = call_next(msg, context)
    if packed and reply.has_content():
        reply.content = transport.pack(reply.content)
    return reply


def dp_clipping_mod(msg: Message, context: Context, call_next, study: Study | None = None):
    """Flower's client-side clipping mod for `dp = client-fixed | client-adaptive`.

    Flower's mods expect a message of one ArrayRecord and one ConfigRecord;
    a medfed train message may also carry peers' ciphertext and key grants.
    The mod sees the model and its config, the handler the whole message."""
    from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod

    dp = _study(context, study).dp
    mod = {"client-fixed": fixedclipping_mod, "client-adaptive": adaptiveclipping_mod}.get(dp)
    if mod is None:
        return call_next(msg, context)
    extra = {k: msg.content[k] for k in list(msg.content.keys()) if k not in ("arrays", "config")}
    for key in extra:
        del msg.content[key]

    def restore_then_next(message: Message, ctx: Context) -> Message:
        for key, value in extra.items():
            message.content[key] = value
        return call_next(message, ctx)

    return mod(msg, context, restore_then_next)


def build_client_app(study: Study | None = None) -> ClientApp:
    """A ClientApp; `study` None reads the study from Flower's run config."""
    app = ClientApp(mods=[site_reply_mod, transport_mod])

    @app.query("hello")
    def handle_hello(msg: Message, context: Context) -> Message:
        node = context.node_config
        identity = ConfigRecord(
            {"site": int(node["partition-id"]), "sites": int(node.get("num-partitions", 0))}
        )
        the_study = _study(context, study)
        if the_study.grant_pairs():  # the study has grants: say who this site is
            identity["certificate"] = _site(context, study).keys.certificate_pem()
        return Message(content=RecordDict({"identity": identity}), reply_to=msg)

    def clipping(msg: Message, context: Context, call_next) -> Message:
        return dp_clipping_mod(msg, context, call_next, study)

    # secure-aggregation = secagg+: Flower's SecAgg+ mod around training (client/secagg.py)
    def secagg(msg: Message, context: Context, call_next) -> Message:
        return secure_aggregation_mod(msg, context, call_next, _study(context, study))

    @app.query("examples")
    def handle_examples(msg: Message, context: Context) -> Message:
        site = _site(context, study)
        return examples_reply(msg, site.site_id, len(site.shard.train))

    @app.train(mods=[secagg, clipping])
    def handle_train(msg: Message, context: Context) -> Message:
        site = _site(context, study)
        rnd = int(msg.content["config"]["server-round"])
        received = {}
        if "peers" in msg.content:
            peers = msg.content["peers"]
            received = {
                int(k.split("-")[1]): (peers[k], peers[k.replace("-images", "-labels")])
                for k in peers
                if k.endswith("-images")
            }
        update = site.train_round(
            msg.content["arrays"].to_torch_state_dict(),
            rnd,
            received,
            keys=_key_messages(msg.content.get("keys")),
            device=_device(site.study),
        )
        result, shared = update.train, update.shared
        metrics = {
            "num-examples": result.examples,
            "train-loss": result.loss,
            "train-s": result.seconds,
            "encrypt-s": shared.encrypt_s if shared else 0.0,
            "decrypt-s": update.decrypt_s + (shared.decrypt_s if shared else 0.0),
        }
        status = {"site": site.site_id}
        if update.peer_images:  # whose images it decrypted under a grant, and how many
            status["peers"] = sorted(update.peer_images)
            status["peer-images"] = [update.peer_images[j] for j in status["peers"]]
        content = {
            "arrays": ArrayRecord(update.model.state_dict()),
            "status": ConfigRecord(status),
        }
        if shared is not None:
            metrics |= {
                "recon-mse": shared.mse,
                "recon-psnr": shared.psnr,
                "recon-ssim": shared.ssim,
                "shared-images": shared.count,
            }
            content["shared"] = ConfigRecord(
                {"images": shared.images_ct, "labels": shared.labels_ct}
            )
        if update.grants:
            content["grants"] = ConfigRecord(update.grants)
        content["metrics"] = MetricRecord(metrics)
        return Message(content=RecordDict(content), reply_to=msg)

    @app.evaluate()
    def handle_evaluate(msg: Message, context: Context) -> Message:
        site = _site(context, study)
        model = build_model(site.study.modality)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        test = site.shard.test
        if len(test) == 0:
            return Message(
                content=RecordDict({"metrics": MetricRecord({"num-examples": 0})}), reply_to=msg
            )
        scores = evaluate(
            model,
            site.study.modality,
            test.images,
            test.targets,
            test.bits,
            device=_device(site.study),
        )
        return Message(
            content=RecordDict({"metrics": MetricRecord({"num-examples": len(test), **scores})}),
            reply_to=msg,
        )

    return app


def _device(study: Study) -> str:
    return "cuda" if study.num_gpus > 0 and torch.cuda.is_available() else "cpu"


def _describe(exc: Exception) -> str:
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    loc = f" (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})" if where else ""
    return f"{type(exc).__name__}: {exc}{loc}"


app = build_client_app()  # for `flwr run .` and SuperNodes
