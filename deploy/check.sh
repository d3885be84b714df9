#!/usr/bin/env bash
# Static checks of deploy/: start-node.sh (syntax, shellcheck when installed, argument handling
# through --dry-run) and the KubeRay manifest (parses as YAML, node conventions). Needs no Ray,
# no Docker and no network. Usage: deploy/check.sh [PYTHON]   (PYTHON: one with PyYAML)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
script=$here/start-node.sh
python=${1:-python3}
failures=0

fail() {
    printf 'FAIL: %s\n' "$*" >&2
    failures=$((failures + 1))
}

# expect RC OUTPUT-PATTERN ARGS...: run start-node.sh with ARGS, check exit code and output.
expect() {
    local want_rc=$1 pattern=$2 out rc=0
    shift 2
    out=$(env -u RAY_ADDRESS -u CUDA_VISIBLE_DEVICES "$script" "$@" 2>&1) || rc=$?
    if [[ $rc != "$want_rc" ]]; then
        fail "start-node.sh $* -> rc $rc, wanted $want_rc: $out"
    elif [[ -n $pattern && $out != *"$pattern"* ]]; then
        fail "start-node.sh $* -> output lacks '$pattern': $out"
    fi
}

bash -n "$script" || fail "bash -n start-node.sh"
if command -v shellcheck >/dev/null 2>&1; then
    shellcheck "$script" "$here/check.sh" || fail "shellcheck"
else
    echo "shellcheck not installed: skipped" >&2
fi

# Usage errors exit 2.
expect 2 "missing ROLE"
expect 2 "unknown kind 'gpu'" gpu --address h:6379
expect 2 "needs --address" cpu
expect 2 "bad --address" cpu --address h
expect 2 "is for worker nodes" head --address h:6379
expect 2 "for the head only" cpu --address h:6379 --port 1
expect 2 "unknown argument" cpu --address h:6379 --bogus
expect 2 "bad --name" cpu --address h:6379 --name 'a b'
expect 0 "usage:" --help

# Labels, resources and ports of the generated ray start command.
expect 0 "--labels fleet.kind=cpu\\,fleet.node=n1 --resources" head --dry-run --name n1
expect 0 "--include-dashboard false" head --dry-run --name n1
expect 0 "--port 6379" head --dry-run --name n1
expect 0 '\{\"bench_slot\":\ 1\}' cpu --address h:6379 --dry-run --name n1
expect 0 "fleet.kind=cpu-intel\\,fleet.node=n1" intel,cpu,intel --address h:6379 --dry-run --name n1
expect 0 "fleet.kind=cpu-intel\\,fleet.node=n1" cpu+intel --address h:6379 --dry-run --name n1
expect 0 "--num-gpus 2" nvidia --address h:6379 --dry-run --name n1 --num-gpus 2 --force
if ! command -v nvidia-smi >/dev/null 2>&1; then
    expect 1 "pass --force to declare them anyway" nvidia --address h:6379 --dry-run --name n1 --num-gpus 2
fi
expect 0 "--block" cpu --address h:6379 --dry-run --name n1 --block
expect 0 "--temp-dir /tmp/x" cpu --address h:6379 --dry-run --name n1 --temp-dir /tmp/x
expect 0 "--ray-client-server-port 40006" head --dry-run --name n1 --ports 40000
expect 0 "--node-ip-address 127.0.0.1" cpu --address h:6379 --dry-run --name n1 --local
expect 2 "stop needs --name" stop
expect 2 "bad --ports" head --dry-run --name n1 --ports 65000
expect 0 "RAY_AUTH_MODE=token" cpu --address h:6379 --dry-run --name n1
out=$("$script" head none --dry-run 2>&1) || fail "head none: $out"
[[ $out != *bench_slot* && $out != *fleet.kind* ]] || fail "head none carries bench_slot/fleet.kind: $out"
out=$(CUDA_VISIBLE_DEVICES=0,1,2 "$script" nvidia --address h:6379 --dry-run --name n1 2>&1) ||
    fail "CUDA_VISIBLE_DEVICES: $out"
[[ $out == *"--num-gpus 3" ]] || fail "CUDA_VISIBLE_DEVICES=0,1,2 should give --num-gpus 3: $out"

# The KubeRay manifest.
if "$python" -c 'import yaml' 2>/dev/null; then
    "$python" - "$here/kuberay/raycluster.yaml" <<'EOF' || fail "kuberay/raycluster.yaml"
import json, re, shlex, sys
import yaml

rc, policy = list(yaml.safe_load_all(open(sys.argv[1])))
assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster", rc["kind"]
assert policy["kind"] == "NetworkPolicy" and "Ingress" in policy["spec"]["policyTypes"], policy
assert policy["spec"]["podSelector"]["matchLabels"] == {"ray.io/cluster": rc["metadata"]["name"]}
groups = [rc["spec"]["headGroupSpec"]] + rc["spec"]["workerGroupSpecs"]
for group in groups:
    pod = group["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False, "no service-account token in sweep pods"
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0, psc
    assert psc["seccompProfile"]["type"] == "RuntimeDefault", psc
    for c in pod["containers"]:
        assert not c["image"].endswith(":latest") and ":" in c["image"].rsplit("/", 1)[-1], c["image"]
        csc = c["securityContext"]
        assert csc["allowPrivilegeEscalation"] is False and csc["capabilities"]["drop"] == ["ALL"], csc
value = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")
kinds = set()
for group in rc["spec"]["workerGroupSpecs"]:
    params = group["rayStartParams"]
    assert "labels" not in params, "KubeRay rejects rayStartParams.labels"
    assert json.loads(shlex.split(params["resources"])[0]) == {"bench_slot": 1}, params
    kind = group["labels"]["fleet.kind"]
    assert value.fullmatch(kind), kind
    kinds.update(kind.split("-"))
    env = {e["name"] for e in group["template"]["spec"]["containers"][0]["env"]}
    assert {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "FLEETBENCH_CACHE"} <= env, env
assert kinds == {"cpu", "nvidia", "intel"}, kinds
EOF
else
    echo "$python has no PyYAML: manifest check skipped" >&2
fi

if ((failures)); then
    printf '%d check(s) failed\n' "$failures" >&2
    exit 1
fi
echo "deploy checks passed"
