"""Test-only pod runner: plays the kubelet (and the scheduler) for one node.

This machine has no kubelet and no container runtime. The runner registers a Node,
keeps it alive (node Lease plus status heartbeats), binds unscheduled pods to it and
runs every container's command as a local process on the pod's own address. It reports
phase, pod IP, container states and the Ready condition driven by the containers' probes,
so kube-controller-manager's Deployment, ReplicaSet, Job, EndpointSlice and
garbage-collector controllers work unchanged.

Pod addresses come from 198.18.0.0/15, delivered locally through lo: the runner adds
`ip route replace local 198.18.0.0/15 dev lo` when it may (root or CAP_NET_ADMIN; the route
stays, remove it with `ip route del local 198.18.0.0/15 dev lo`). Addresses in 127/8
would need no route, but EndpointSlice validation refuses loopback addresses, so Services
would get no endpoints; the runner falls back to them, with a warning, only when it
cannot add the route. A lock file per address in $TMPDIR/tars-podrunner-addresses keeps
runners of parallel test sessions apart, and addresses something still listens on (a
process left by a killed run) are skipped.

What a container gets:
- argv = `command` + `args` with `$(VAR)` references expanded the way Kubernetes does;
  the executable is looked up on PATH with the interpreter's own bin directory (the
  project's virtualenv) first. An absolute path that does not exist on this machine
  falls back to its basename on that PATH.
- the environment the kubelet would build: `envFrom`, then `env` (`value` with
  `$(VAR)` expansion, `fieldRef`, `configMapKeyRef`, `secretKeyRef`), on top of what an
  image would provide: PATH, HOME, HOSTNAME, LANG and PYTHONUNBUFFERED. Nothing of the
  runner's own environment leaks in.
- if the pod mounts a service-account token volume (the API server adds one unless
  `automountServiceAccountToken` is false), `KUBECONFIG` pointing at a kubeconfig with a
  pod-bound token from the TokenRequest API, so RBAC applies to the process for real.

Limits (a process sees the host filesystem, not the container's):
- volumes become host directories: `emptyDir` a per-pod directory; `configMap`,
  `secret` and `projected` (token, configMap, secret, downwardAPI items) files written
  once at pod start; `hostPath` the host path itself; a `persistentVolumeClaim` the path
  of the hostPath or local PersistentVolume it is bound to (kube-controller-manager binds
  claims to matching volumes; nothing provisions them). Any other volume type, when
  mounted, keeps the container waiting with CreateContainerConfigError. A process only
  finds a mount where an env value, a command/args word or `workingDir` names a path
  under a `mountPath` (also after `--flag=` / `NAME=`): those are rewritten to the host
  directory. `readOnly` and `subPathExpr` are ignored; `subPath` is honoured.
- no images: a container without `command` cannot be started (CreateContainerConfigError).
- no service links (KUBERNETES_SERVICE_HOST and friends), so clients use KUBECONFIG
  rather than in-cluster config; no resourceFieldRef, no resource limits, no security
  context, no preStop/postStart hooks, no grpc probes, no `kubectl exec`
  or port-forward. Each container's output is appended to
  `<state-dir>/pods/<ns>_<pod>_<uid>/<container>.log`; `kubectl logs` (with -f and --tail)
  reads it through the runner's log endpoint.
- scheduling honours `schedulerName`, `schedulingGates` and `nodeSelector` only.
- NetworkPolicies are not enforced. `hostNetwork` pods get 127.0.0.1, which EndpointSlices
  refuse.
- init containers run in order before the others; native sidecars (init containers with
  `restartPolicy: Always`) are not supported: the pod would never leave Pending.
"""

from __future__ import annotations

from tests.harness.podrunner.addresses import POD_NETWORK
from tests.harness.podrunner.environment import expand
from tests.harness.podrunner.runner import PodRunner

__all__ = ["POD_NETWORK", "PodRunner", "expand"]
