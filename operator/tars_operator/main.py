"""`tars-operator`: run the TARS operator against the cluster of a kubeconfig or in-cluster.

The operator runs standalone (no peering CRD): deploy exactly one replica of it (the
chart uses the Recreate strategy). kopf's handler progress and last-handled spec are
kept in annotations under tars.dev, so the TARS CRDs are all it needs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import kopf
import kubernetes.config
import urllib3.exceptions
from tars_api.meta import API_VERSION, GROUP
from tars_api.replica import TARS_REPLICA_PLURAL
from tars_api.run import SELF_CODING_RUN_PLURAL

from tars_operator import __version__, metrics
from tars_operator.config import ConfigError, OperatorConfig, load_config
from tars_operator.kube import ApiError, KubeClient, load_configuration

IN_CLUSTER_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
ANNOTATION_PREFIX = "tars.dev"
# kopf's documentation: let the server end each watch well before the client gives up,
# so a silently dropped connection is noticed within minutes, not never.
WATCH_SERVER_TIMEOUT_SECONDS = 600
WATCH_CLIENT_TIMEOUT_SECONDS = 660
WATCH_CONNECT_TIMEOUT_SECONDS = 60
REQUEST_TIMEOUT_SECONDS = 60
REQUEST_CONNECT_TIMEOUT_SECONDS = 10
CONSISTENCY_TIMEOUT_SECONDS = 30

log = logging.getLogger("tars_operator")


class StartupError(Exception):
    """The operator cannot start; the message says why and what to do."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tars-operator",
        description=(
            "Reconcile TarsReplica objects into Deployments and Services, and keep\n"
            "SelfCodingRun status truthful. Watches the namespaces given with -n, all\n"
            "of them with -A, or else the current context's namespace."
        ),
        epilog=(
            "Examples:\n"
            "  tars-operator --kubeconfig .dev/kubeconfig --namespace default\n"
            "  tars-operator --all-namespaces --config /etc/tars/operator.yaml\n\n"
            "The CRDs must be installed first: kubectl apply -f crds/"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        dest="namespaces",
        action="append",
        metavar="NAMESPACE",
        help="namespace to watch; repeat for several (glob patterns as kopf accepts them)",
    )
    scope.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="watch every namespace (cluster-wide RBAC)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="operator configuration YAML (role defaults, image, engine, model); "
        "default $TARS_OPERATOR_CONFIG, TARS_OPERATOR_<FIELD> variables override it",
    )
    parser.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="kubeconfig file (default $KUBECONFIG or ~/.kube/config)",
    )
    parser.add_argument(
        "--context", metavar="NAME", help="kubeconfig context (default: the current one)"
    )
    parser.add_argument(
        "--liveness-port",
        type=int,
        default=8080,
        metavar="PORT",
        help="port of /healthz (0: off; default 8080)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=9090,
        metavar="PORT",
        help="port of /metrics (0: off; default 9090)",
    )
    parser.add_argument(
        "--bind-address",
        default="0.0.0.0",
        metavar="ADDRESS",
        help="address of both endpoints (default 0.0.0.0)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=16,
        metavar="N",
        help="threads running handlers, and API connections (default 16)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _default_namespace(kubeconfig: str | None, context: str | None) -> str:
    if kubeconfig is None and context is None and IN_CLUSTER_NAMESPACE_FILE.exists():
        return IN_CLUSTER_NAMESPACE_FILE.read_text().strip()
    try:
        contexts, active = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
    except kubernetes.config.ConfigException:
        return "default"
    chosen = (
        next((entry for entry in contexts if entry["name"] == context), active)
        if context
        else active
    )
    return str((chosen or {}).get("context", {}).get("namespace") or "default")


def _check_api(kube: KubeClient, server: str) -> None:
    try:
        served = kube.served_resources(API_VERSION)
    except urllib3.exceptions.HTTPError as error:
        cause = getattr(error, "reason", None) or error
        raise StartupError(f"cannot reach the API server at {server}: {cause}") from error
    except ApiError as error:
        raise StartupError(f"the API server at {server} refused discovery: {error}") from error
    missing = sorted({TARS_REPLICA_PLURAL, SELF_CODING_RUN_PLURAL} - (served or set()))
    if missing:
        crds = ", ".join(f"{plural}.{GROUP}" for plural in missing)
        raise StartupError(
            f"the TARS CRDs are not installed on {server} (missing {crds}); "
            "install them with `kubectl apply -f crds/` or `tarscli self-code setup --install-crds`"
        )


def build_settings(workers: int) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.watching.server_timeout = WATCH_SERVER_TIMEOUT_SECONDS
    settings.watching.client_timeout = WATCH_CLIENT_TIMEOUT_SECONDS
    settings.watching.connect_timeout = WATCH_CONNECT_TIMEOUT_SECONDS
    settings.networking.request_timeout = REQUEST_TIMEOUT_SECONDS
    settings.networking.connect_timeout = REQUEST_CONNECT_TIMEOUT_SECONDS
    # Handler log lines stay in the log; Events are posted explicitly, on transitions only.
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = workers
    # kopf waits this long for the watch to deliver its own annotation patch before it
    # treats an older event as current; on a busy API server 5 s (the default) is too
    # short and a created replica would be seen as new once more.
    settings.persistence.consistency_timeout = CONSISTENCY_TIMEOUT_SECONDS
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    return settings


def run(arguments: argparse.Namespace, config: OperatorConfig) -> None:
    # Registering the handlers is importing them.
    from tars_operator import handlers

    try:
        configuration = load_configuration(arguments.kubeconfig, arguments.context)
    except (kubernetes.config.ConfigException, OSError) as error:
        raise StartupError(f"cannot load Kubernetes credentials: {error}") from error
    kube = KubeClient(
        configuration, pool_size=arguments.workers, request_timeout=REQUEST_TIMEOUT_SECONDS
    )
    _check_api(kube, configuration.host)
    namespaces: list[str] = arguments.namespaces or []
    if not arguments.all_namespaces and not namespaces:
        namespaces = [_default_namespace(arguments.kubeconfig, arguments.context)]
    scope = "all namespaces" if arguments.all_namespaces else f"namespaces {', '.join(namespaces)}"
    log.info("tars-operator %s watching %s on %s", __version__, scope, configuration.host)
    if arguments.metrics_port:
        metrics.serve(arguments.metrics_port, arguments.bind_address)
        log.info("metrics on http://%s:%d/metrics", arguments.bind_address, arguments.metrics_port)
    liveness = None
    if arguments.liveness_port:
        liveness = f"http://{arguments.bind_address}:{arguments.liveness_port}/healthz"
        log.info("liveness on %s", liveness)
    try:
        kopf.run(
            standalone=True,
            clusterwide=arguments.all_namespaces,
            namespaces=namespaces,
            liveness_endpoint=liveness,
            settings=build_settings(arguments.workers),
            memo=kopf.Memo(runtime=handlers.Runtime(config=config, kube=kube)),
        )
    finally:
        kube.close()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if arguments.workers < 1:
        parser.error("--workers must be at least 1")
    kopf.configure(verbose=arguments.verbose, log_format=kopf.LogFormat.FULL)
    # A connection retry is not news; the request's final error is reported where it matters.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    if not arguments.verbose:
        # kopf logs every handler's success; transitions are posted as Events instead.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
        # Each active run polls its coordinator every second.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        config = load_config(arguments.config)
        run(arguments, config)
    except (ConfigError, StartupError) as error:
        print(f"tars-operator: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
