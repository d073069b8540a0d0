"""The hospital as a Flower ClientApp: an adapter between Flower's messages
(study.protocol) and the site in plain Python (client.site.Site).

- `query.hello`: which site this SuperNode is and of how many, and its
  identity certificate when the study has grants (`protocol.Identity`);
- `query.examples` (SecAgg+): the site's number of training images;
- `train`: one round of `Site.train_round` (`protocol.TrainReply`);
- `evaluate`: `Site.evaluate` on the site's own test patients.
Every message passes through `site_reply_mod` and `transport_mod`
(client/mods.py); train messages through SecAgg+ (client/secagg.py), the DP
clipping mod and fault injection (client/faults.py: installed by the
simulation and the tests, or by a hospital's own node-config opt-in).
Keys and encryptor weights stay in the site's state folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from client.faults import fault_mod, node_allows_faults
from client.kept_sites import KeptSites, SiteKey, run_config_key
from client.mods import dp_clipping_mod, site_reply_mod, transport_mod
from client.secagg import secure_aggregation_mod
from client.site import LocalUpdate, Site
from study import protocol
from study.config import Study
from study.protocol import EvaluateReply, Examples, Identity, KeyMessages, PeerShares, TrainReply

__all__ = ["app", "build_client_app", "dp_clipping_mod", "site_reply_mod", "transport_mod"]


def build_client_app(study: Study | None = None, *, inject_faults: bool | None = None) -> ClientApp:
    """A ClientApp. `study` None: the study is read from Flower's run config (what a
    deployed SuperNode runs). `inject_faults` (default: whether `study` is given, as
    by the simulation and the tests) applies the study's `fault-sites`; otherwise only
    a node config with `allow-fault-injection=true` does."""
    faults_on = study is not None if inject_faults is None else inject_faults
    kept = KeptSites()  # a long-lived app process keeps its sites (client/kept_sites.py)
    parsed: dict[tuple, Study] = {}  # the current run config's study, parsed once

    def study_of(context: Context) -> Study:
        if study is not None:
            return study
        key = run_config_key(context)
        if key not in parsed:
            parsed.clear()
            parsed[key] = Study.from_mapping(dict(context.run_config), source="run config")
        return parsed[key]

    def site_of(context: Context) -> Site:
        def build() -> Site:
            node, the_study = context.node_config, study_of(context)
            identity = node.get("identity-dir")
            return Site(
                the_study,
                int(node["partition-id"]),
                int(node.get("num-partitions", the_study.num_sites)),
                identity_dir=Path(str(identity)) if identity else None,
            )

        return kept.get(SiteKey.of(context, study), build)

    app = ClientApp(mods=[site_reply_mod, transport_mod])

    @app.query(protocol.HELLO_ACTION)
    def hello(msg: Message, context: Context) -> Message:
        node = context.node_config
        site, sites = int(node["partition-id"]), int(node.get("num-partitions", 0))
        certificate = None
        if study_of(context).grant_pairs():  # the study has grants: say who this site is
            certificate = site_of(context).keys.certificate_pem()
        return Message(content=Identity(site, sites, certificate).to_record(), reply_to=msg)

    @app.query(protocol.EXAMPLES_ACTION)
    def examples(msg: Message, context: Context) -> Message:
        site = site_of(context)
        reply = Examples(site.site_id, len(site.shard.train))
        return Message(content=reply.to_record(), reply_to=msg)

    def secagg(msg: Message, context: Context, call_next: Callable) -> Message:
        return secure_aggregation_mod(msg, context, call_next, study_of(context))

    def clipping(msg: Message, context: Context, call_next: Callable) -> Message:
        return dp_clipping_mod(msg, context, call_next, study_of(context))

    def faults(msg: Message, context: Context, call_next: Callable) -> Message:
        if faults_on or node_allows_faults(context.node_config):
            return fault_mod(msg, context, call_next, study_of(context))
        return call_next(msg, context)

    @app.train(mods=[secagg, clipping, faults])
    def train(msg: Message, context: Context) -> Message:
        site, content = site_of(context), msg.content
        update = site.train_round(
            content[protocol.ARRAYS].to_torch_state_dict(),
            int(content[protocol.CONFIG][protocol.SERVER_ROUND]),
            PeerShares.from_record(content.get(protocol.PEERS)).shares,
            keys=KeyMessages.from_record(content.get(protocol.KEYS)),
            device=_device(site.study),
        )
        return Message(content=train_reply(site.site_id, update).to_record(), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        site = site_of(context)
        state = msg.content[protocol.ARRAYS].to_torch_state_dict()
        n, scores = site.evaluate(state, device=_device(site.study))
        return Message(content=EvaluateReply(n, scores).to_record(), reply_to=msg)

    return app


def train_reply(site: int, update: LocalUpdate) -> TrainReply:
    """The train reply of one round's local work."""
    result, shared = update.train, update.shared
    return TrainReply(
        site=site,
        arrays=ArrayRecord(update.model.state_dict()),
        num_examples=result.examples,
        train_loss=result.loss,
        train_s=result.seconds,
        encrypt_s=shared.encrypt_s if shared else 0.0,
        decrypt_s=update.decrypt_s + (shared.decrypt_s if shared else 0.0),
        shared=None
        if shared is None
        else protocol.SharedImages(
            shared.images_ct, shared.labels_ct, shared.count, shared.mse, shared.psnr, shared.ssim
        ),
        peer_images=update.peer_images,
        grants=update.grants,
    )


def _device(study: Study) -> str:
    return "cuda" if study.num_gpus > 0 and torch.cuda.is_available() else "cpu"


app = build_client_app()  # for `flwr run .` and SuperNodes
