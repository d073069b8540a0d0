"""`medfed deploy local|submit|register|certs`: the study on Flower's deployment runtime.

- `local`: SuperLink + N SuperNodes as processes on 127.0.0.1, the study run
  through them with `flwr run`, everything stopped afterwards;
- `certs`: CA, SuperLink certificate and SuperNode keys (also deploy/certs.py);
- `register`: register SuperNode public keys with a running SuperLink;
- `submit`: submit a study to a running SuperLink (the docker-compose demo's
  one-shot `submit` service) and wait for its results;
- `executor`: the long-lived ClientApp executor beside one SuperNode
  (`--isolation process`), deploy/executor.py.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rich.console import Console

from simulations.commands.run import (
    ProgressDisplay,
    add_resume_args,
    add_study_args,
    load_study,
    result_table,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "deploy",
        help="run a study on Flower's deployment runtime",
        description="Run a study as a real federation: a SuperLink and one "
        "SuperNode per hospital (Flower's deployment runtime).",
    )
    dsub = p.add_subparsers(dest="deploy_command", metavar="WHERE", required=True)

    loc = dsub.add_parser(
        "local",
        help="SuperLink + SuperNodes as local processes",
        description="Start a SuperLink and one SuperNode per site on "
        "127.0.0.1, run the study through them with `flwr run`, "
        "write the same result files as `medfed run`, and stop "
        "every process again (also on Ctrl-C or error).",
    )
    add_study_args(loc)
    add_resume_args(loc)
    loc.add_argument(
        "--sites",
        type=int,
        help="number of SuperNodes (default: the study's num-sites; sets num-sites)",
    )
    loc.add_argument(
        "--tls",
        action="store_true",
        help="TLS between SuperNodes and SuperLink, with SuperNode authentication",
    )
    loc.add_argument(
        "--certs",
        metavar="DIR",
        help="with --tls: use these certificates and node keys (from `medfed deploy "
        "certs`) instead of fresh temporary ones",
    )
    loc.add_argument(
        "--port",
        type=int,
        default=0,
        help="SuperLink port; SuperNodes use the next N ports (default: free ports)",
    )
    loc.add_argument(
        "--app",
        default=None,
        metavar="DIR",
        help="the Flower app folder (default: this medfed checkout)",
    )
    loc.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the study")
    loc.add_argument(
        "--isolation",
        choices=("process", "subprocess"),
        default="process",
        help="process (default): one long-lived medfed executor per SuperNode runs its "
        "messages (imports and the shard stay loaded); subprocess: Flower's own, a new "
        "flwr-clientapp process per message",
    )
    loc.set_defaults(func=main_local)

    ex = dsub.add_parser(
        "executor",
        help="run a SuperNode's ClientApp messages in one long-lived process",
        description="Beside a `flower-supernode --isolation process`: ask its Runtime API "
        "for ClientApp tasks and run each in one long-lived process (imports, the app and "
        "each site's shard stay loaded), with Flower's replies, error replies and "
        "heartbeats. A command after `--` (the SuperNode) is started too, and the executor "
        "stops with it.",
    )
    from deploy.executor import add_arguments

    add_arguments(ex)
    ex.add_argument(
        "supernode_command",
        nargs=argparse.REMAINDER,
        metavar="-- SUPERNODE COMMAND",
        help="optional: the flower-supernode command line to run and watch",
    )
    ex.set_defaults(func=main_executor)

    sb = dsub.add_parser(
        "submit",
        help="submit a study to a running SuperLink and wait",
        description="Submit a study with `flwr run` to a running SuperLink "
        "(e.g. the docker-compose demo) and wait for its results.",
    )
    add_study_args(sb)
    add_resume_args(sb)
    sb.add_argument("--superlink", required=True, metavar="HOST:PORT")
    tls = sb.add_mutually_exclusive_group(required=True)
    tls.add_argument("--root-certificates", metavar="CA", help="CA certificate of the SuperLink")
    tls.add_argument("--insecure", action="store_true", help="no TLS")
    sb.add_argument("--app", default=None, metavar="DIR", help="the Flower app folder")
    sb.add_argument("--timeout", type=float, default=3600.0)
    sb.set_defaults(func=main_submit)

    rg = dsub.add_parser("register", help="register SuperNode public keys with a SuperLink")
    rg.add_argument("keys", nargs="+", metavar="KEY.pub")
    rg.add_argument("--superlink", required=True, metavar="HOST:PORT")
    rg.add_argument("--root-certificates", required=True, metavar="CA")
    rg.add_argument(
        "--wait",
        type=float,
        default=120.0,
        help="seconds to keep trying while the SuperLink starts",
    )
    rg.set_defaults(func=main_register)

    ce = dsub.add_parser("certs", help="make a CA, SuperLink certificate and SuperNode keys")
    ce.add_argument("out", nargs="?", default="deploy/certs", help="folder (default deploy/certs)")
    ce.add_argument("--sites", type=int, default=3, help="SuperNode key pairs to make")
    ce.add_argument(
        "--name",
        action="append",
        default=None,
        metavar="HOST",
        help="SuperLink host name or IP for the certificate (repeatable; default "
        "superlink, localhost, 127.0.0.1)",
    )
    ce.add_argument(
        "--study",
        default="demo",
        metavar="NAME|STUDY.toml",
        help="the study the sites' grant identities are certified for: its name, or a study "
        "file to read it from (default: demo)",
    )
    ce.add_argument("--overwrite", action="store_true", help="replace existing files")
    ce.set_defaults(func=main_certs)


def _load(args: argparse.Namespace):
    return load_study(
        args.study,
        args.overrides,
        args.out,
        getattr(args, "resume", False),
        getattr(args, "trust_checkpoint", False),
    )


def _round_printer(study, console: Console):
    """Progress of a deployed study: the same events and display as `medfed run`."""
    return ProgressDisplay(study, console, enabled=False).update


def main_local(args: argparse.Namespace) -> int:
    from deploy import DeployError, default_app_dir, run_local_deployment
    from simulations.cli import UserError

    study = _load(args)
    if args.sites is not None and args.sites < 1:
        raise UserError(f"--sites {args.sites}: need at least 1 SuperNode")
    if args.certs and not args.tls:
        raise UserError("--certs needs --tls")
    console = Console(stderr=True)
    sites = args.sites or study.num_sites
    console.print(
        f"[bold]medfed[/] deploy local: study [cyan]{study.name}[/], {sites} SuperNodes"
        f"{' with TLS' if args.tls else ''} x {study.num_rounds} rounds -> "
        f"{study.out_dir}"
    )
    try:
        summary = run_local_deployment(
            study,
            sites=args.sites,
            tls=args.tls,
            port=args.port,
            certs=args.certs,
            app_dir=args.app or default_app_dir(),
            echo=console.print,
            progress=_round_printer(study, console),
            timeout=args.timeout,
            isolation=args.isolation,
        )
    except DeployError as exc:
        raise UserError(str(exc)) from None
    Console().print(
        result_table(
            study.replace(num_sites=sites, min_sites=min(study.min_sites, sites))
            if args.sites
            else study
        )
    )
    console.print(
        f"results: {study.out_dir}/summary.json  ({summary['wall_seconds']:.1f} s, "
        f"run {summary.get('run_id')}); all processes stopped"
    )
    return 0


def main_submit(args: argparse.Namespace) -> int:
    from deploy import DeployError, default_app_dir, submit_study
    from simulations.cli import UserError

    study = _load(args)
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="medfed-submit-") as tmp:
        work = Path(tmp)
        home = work / "flwr-home"
        home.mkdir()
        lines = [
            "[superlink]",
            'default = "federation"',
            "",
            "[superlink.federation]",
            f'address = "{args.superlink}"',
        ]
        if args.insecure:
            lines.append("insecure = true")
        else:
            ca = Path(args.root_certificates).absolute()
            if not ca.is_file():
                raise FileNotFoundError(f"--root-certificates {ca}: file not found")
            lines.append(f'root-certificates = "{ca}"')
        (home / "config.toml").write_text("\n".join(lines) + "\n")
        if not args.insecure:
            from deploy import probe_tls

            try:
                probe_tls(args.superlink, args.root_certificates)
            except DeployError as exc:
                raise UserError(str(exc)) from None
        console.print(
            f"[bold]medfed[/] submitting study [cyan]{study.name}[/] to {args.superlink}"
            f" -> {study.out_dir}"
        )
        try:
            sub = submit_study(
                study,
                flwr_home=home,
                connection="federation",
                app_dir=args.app or default_app_dir(),
                work=work,
                progress=_round_printer(study, console),
                timeout=args.timeout,
            )
        except DeployError as exc:
            raise UserError(str(exc)) from None
    Console().print(result_table(study))
    console.print(f"results: {study.out_dir}/summary.json (run {sub.run_id})")
    return 0


def main_executor(args: argparse.Namespace) -> int:
    from deploy.executor import supervise, validate

    command = list(args.supernode_command)
    if command[:1] == ["--"]:
        command = command[1:]
    validate(args)
    return supervise(args, command)


def main_register(args: argparse.Namespace) -> int:
    from deploy import DeployError, register_keys
    from simulations.cli import UserError

    try:
        for line in register_keys(
            args.keys,
            superlink=args.superlink,
            root_certificates=args.root_certificates,
            wait=args.wait,
        ):
            print(line)
    except DeployError as exc:
        raise UserError(str(exc)) from None
    return 0


def main_certs(args: argparse.Namespace) -> int:
    from deploy import SERVER_NAMES, write_certificates

    study = args.study
    if study.endswith(".toml"):
        from study.config import Study

        study = Study.from_toml(study).name
    certs = write_certificates(
        args.out,
        sites=args.sites,
        names=args.name or SERVER_NAMES,
        overwrite=args.overwrite,
        study=study,
    )
    print(
        f"certificates in {certs.folder}: ca.crt, server.pem, server.key, "
        f"site-0..{args.sites - 1}.key/.pub, and grant identities site-0..{args.sites - 1}/ "
        f"and auditor/ for study {study!r} (private keys mode 0600; never commit them)"
    )
    return 0
