"""A pod's status as the kubelet reports it: the phase its containers' states give, the
conditions with the time each last changed, its addresses and its containers' statuses,
patched onto the pod whenever they differ from what was last reported."""

from __future__ import annotations

import logging

from kubernetes.client.exceptions import ApiException

from tests.harness.podrunner.addresses import HOST_IP
from tests.harness.podrunner.cluster import (
    API_TIMEOUT_SECONDS,
    ClusterAccess,
    JsonDict,
    PodView,
    now_rfc3339,
)
from tests.harness.podrunner.containers import ContainerRuntime

log = logging.getLogger("podrunner")


def pod_phase(containers: list[ContainerRuntime]) -> str:
    inits = [runtime for runtime in containers if runtime.init]
    apps = [runtime for runtime in containers if not runtime.init]
    if any(
        runtime.done and runtime.last_exit and runtime.last_exit.exit_code != 0 for runtime in inits
    ):
        return "Failed"
    if not all(runtime.done for runtime in inits):
        return "Pending"
    if all(runtime.done for runtime in apps):
        failed = any(runtime.last_exit and runtime.last_exit.exit_code != 0 for runtime in apps)
        return "Failed" if failed else "Succeeded"
    if any(runtime.process is not None or runtime.last_exit is not None for runtime in apps):
        return "Running"
    return "Pending"


class PodStatusReporter:
    """Reports one pod's status; started with the pod's worker, which gives the startTime."""

    def __init__(self, access: ClusterAccess, uid: str, pod_ip: str) -> None:
        self._access = access
        self._uid = uid
        self._pod_ip = pod_ip
        self._start_time = now_rfc3339()
        self._transitions: dict[str, tuple[str, str]] = {}
        self._reported: JsonDict | None = None

    def _condition(self, kind: str, ok: bool, reason: str = "") -> JsonDict:
        status = "True" if ok else "False"
        previous = self._transitions.get(kind)
        if previous is None or previous[0] != status:
            self._transitions[kind] = (status, now_rfc3339())
        condition: JsonDict = {
            "type": kind,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": self._transitions[kind][1],
        }
        if reason and not ok:
            condition["reason"] = reason
        return condition

    def _status(self, pod: PodView, containers: list[ContainerRuntime], prepared: bool) -> JsonDict:
        phase = pod_phase(containers)
        apps = [runtime for runtime in containers if not runtime.init]
        initialized = all(runtime.done for runtime in containers if runtime.init)
        containers_ready = all(runtime.ready for runtime in apps)
        existing = {condition.type: condition.status for condition in pod.status.conditions or []}
        gates = [gate.condition_type for gate in pod.spec.readiness_gates or []]
        gates_ready = all(existing.get(gate) == "True" for gate in gates)
        terminal = phase in ("Succeeded", "Failed")
        conditions = [
            self._condition("PodScheduled", True),
            self._condition("PodReadyToStartContainers", prepared),
            self._condition("Initialized", initialized, "ContainersNotInitialized"),
            self._condition(
                "ContainersReady", containers_ready and not terminal, "ContainersNotReady"
            ),
            self._condition(
                "Ready", containers_ready and gates_ready and not terminal, "ContainersNotReady"
            ),
        ]
        return {
            "phase": phase,
            "hostIP": HOST_IP,
            # Replace, not merge: a pod adopted after a restart may get a new address.
            "hostIPs": [{"$patch": "replace"}, {"ip": HOST_IP}],
            "podIP": self._pod_ip,
            "podIPs": [{"$patch": "replace"}, {"ip": self._pod_ip}],
            "startTime": self._start_time,
            "conditions": conditions,
            "initContainerStatuses": [runtime.status() for runtime in containers if runtime.init],
            "containerStatuses": [runtime.status() for runtime in apps],
        }

    def report(self, pod: PodView, containers: list[ContainerRuntime], prepared: bool) -> None:
        """Patch the status when it changed; a failure is logged and the next call tries again."""
        status = self._status(pod, containers, prepared)
        if status == self._reported:
            return
        try:
            self._access.core.patch_namespaced_pod_status(
                pod.name,
                pod.namespace,
                {"metadata": {"uid": self._uid}, "status": status},
                _content_type="application/strategic-merge-patch+json",
                _request_timeout=API_TIMEOUT_SECONDS,
            )
            self._reported = status
        except ApiException as error:
            # Not found or conflicting uid: the pod is going away and the watch will say so.
            log.warning(
                "status of pod %s/%s not reported: %s %s",
                pod.namespace,
                pod.name,
                error.status,
                error.reason,
            )
        except Exception:  # connection trouble: the next step reports again
            log.exception("status of pod %s/%s not reported", pod.namespace, pod.name)
