#!/usr/bin/env bash
# A fleet of hosts on one machine, for testing (deploy/README.md, "A fleet on one machine for testing").
#
#   test-fleet.sh up [--workers N] [options]   head + N workers + a coordinator host that is no node
#   test-fleet.sh add HOST [--kind KIND] [--venv DIR]   one more worker host (e.g. another checkout)
#   test-fleet.sh exec HOST CMD...             run CMD on HOST (its network, HOME, CPUs, environment)
#   test-fleet.sh link HOST down|up            cut or restore HOST's cable (at the switch)
#   test-fleet.sh stop|start HOST              stop or (re)start HOST's Ray node (start-node.sh)
#   test-fleet.sh hosts                        name, address, CPU and venv of every host
#   test-fleet.sh down                         stop and remove everything the fleet made
#
# Every host is a Linux network namespace with one address on a private bridge (10.213.N.0/24 by
# default: no address outside the namespaces this script made is ever used, and the namespaces
# have no route anywhere else), a HOME, Ray temp root and engine cache of its own, and one CPU
# (a cgroup cpuset plus a CPU quota where the machine allows cgroups, else taskset). Nodes are
# started with deploy/start-node.sh exactly as the deploy guide says: the head creates the token,
# the token file is copied to the same path on every other host, workers join HEAD:6379.
# Needs root and iproute2.
set -euo pipefail

PROG=${0##*/}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
FLEET=${FLEET_NAME:-fbt}

usage() {
    cat <<EOF
usage: $PROG up [--workers N] [--net 10.213.N] [--cpu-quota PCT] [--venv DIR]
       $PROG add HOST [--kind KIND] [--venv DIR]
       $PROG exec HOST CMD...
       $PROG link HOST down|up
       $PROG stop|start HOST
       $PROG hosts
       $PROG down

Hosts are named head, w1..wN and coord (the coordinator's host, which runs no Ray node).
options:
  --workers N      worker hosts besides the head (default 1)
  --net PREFIX     the bridge's /24 (default 10.213.0); host addresses: head .1, wK .(1+K), coord .200
  --cpu-quota PCT  each host's CPU quota in percent of one CPU (default 100; 0: none)
  --venv DIR       virtual environment whose ray, python and coordinator the hosts use
                   (default: \$VIRTUAL_ENV, else $REPO/.venv)
  --kind KIND      the added host's node kind (default cpu)
environment:
  FLEET_NAME       names this fleet's namespaces, cgroups and state folder (default fbt);
                   several fleets can exist side by side under different names
  FLEET_ROOT       state folder (default /tmp/\$FLEET_NAME): hosts' HOMEs, Ray temp folders, logs
  FLEET_KEEP       1: an 'up' that fails keeps what it made (to read the logs; then '$PROG down')
EOF
}

die() { printf '%s: error: %s\n' "$PROG" "$1" >&2; exit "${2:-1}"; }
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }

[[ $FLEET =~ ^[a-z][a-z0-9]{0,7}$ ]] || die "FLEET_NAME '$FLEET': 1-8 lowercase letters and digits" 2
ROOT=${FLEET_ROOT:-/tmp/$FLEET}
NETNS=$FLEET-net                      # the switch: a namespace holding only the bridge
CG_NAME=fleetbench-$FLEET
HEAD_PORT=6379

ns_of() { printf '%s-%s' "$FLEET" "$1"; }

# ---- state: $ROOT/hosts has one line per host: NAME IP CPU VENV ROLE KIND--------------------------
host_field() { # HOST FIELD(2=ip 3=cpu 4=venv 5=role 6=kind)
    [[ -f $ROOT/hosts ]] || die "no fleet '$FLEET' (run '$PROG up' first)"
    awk -v h="$1" -v f="$2" '$1 == h { print $f; found = 1 } END { exit !found }' "$ROOT/hosts" ||
        die "no host '$1' in fleet '$FLEET' (see '$PROG hosts')" 2
}

# ---- CPUs: a cgroup per host (v1 cpu + cpuset, or v2), else taskset --------------------------------
cgroup_dirs() { # HOST -> the host's cgroup folders, one a line (none when cgroups are not usable)
    local h=$1
    if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
        [[ ! -d /sys/fs/cgroup/$CG_NAME/$h ]] || printf '%s\n' "/sys/fs/cgroup/$CG_NAME/$h"
    else
        local c
        for c in cpu cpuset; do
            [[ ! -d /sys/fs/cgroup/$c/$CG_NAME/$h ]] || printf '%s\n' "/sys/fs/cgroup/$c/$CG_NAME/$h"
        done
    fi
}

make_cgroup() { # HOST CPU QUOTA_PCT: create the host's cgroups; failure leaves none (taskset then)
    local h=$1 cpu=$2 pct=$3 period=100000 base
    if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
        base=/sys/fs/cgroup/$CG_NAME
        {
            mkdir -p "$base/$h" &&
                echo "+cpu +cpuset" >"$base/cgroup.subtree_control" &&
                echo "$cpu" >"$base/$h/cpuset.cpus" &&
                if ((pct > 0)); then echo "$((pct * period / 100)) $period" >"$base/$h/cpu.max"; fi
        } 2>/dev/null && return 0
    else
        local cs=/sys/fs/cgroup/cpuset cc=/sys/fs/cgroup/cpu
        {
            [[ -d $cs && -d $cc ]] &&
                mkdir -p "$cs/$CG_NAME" "$cc/$CG_NAME/$h" &&
                cat "$cs/cpuset.cpus" >"$cs/$CG_NAME/cpuset.cpus" &&
                cat "$cs/cpuset.mems" >"$cs/$CG_NAME/cpuset.mems" &&
                mkdir -p "$cs/$CG_NAME/$h" &&
                echo "$cpu" >"$cs/$CG_NAME/$h/cpuset.cpus" &&
                cat "$cs/cpuset.mems" >"$cs/$CG_NAME/$h/cpuset.mems" &&
                echo "$period" >"$cc/$CG_NAME/$h/cpu.cfs_period_us" &&
                if ((pct > 0)); then echo "$((pct * period / 100))" >"$cc/$CG_NAME/$h/cpu.cfs_quota_us"; fi
        } 2>/dev/null && return 0
    fi
    log "cgroups not usable here: host $h gets CPU $cpu by taskset, without a quota"
    remove_cgroups "$h"
    return 0
}

remove_cgroups() { # [HOST]: the host's cgroups, or (no HOST) the whole fleet's
    local d
    for d in /sys/fs/cgroup/$CG_NAME /sys/fs/cgroup/cpu/$CG_NAME /sys/fs/cgroup/cpuset/$CG_NAME; do
        [[ -d $d ]] || continue
        if [[ -n ${1:-} ]]; then
            [[ ! -d $d/$1 ]] || rmdir "$d/$1" 2>/dev/null || true
        else
            find "$d" -mindepth 1 -depth -type d -exec rmdir {} \; 2>/dev/null || true
            rmdir "$d" 2>/dev/null || true
        fi
    done
}

# ---- running on a host --------------------------------------------------------------------------
# The host's environment is built from nothing (env -i), as on a machine of its own: its HOME,
# its venv first on PATH, its Ray temp root. Nothing of the caller's shell leaks in (in
# particular not RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, with which a node on a real address refuses
# to join); pass variables as VAR=VALUE words after CMD's 'env', e.g. 'exec coord env A=1 cmd'.
on_host() { # HOST CMD...
    local h=$1 venv cpu d
    shift
    venv=$(host_field "$h" 4)
    cpu=$(host_field "$h" 3)
    local -a enter=() dirs=()
    mapfile -t dirs < <(cgroup_dirs "$h")
    if ((${#dirs[@]} == 0)); then
        enter=(taskset -c "$cpu")
    fi
    # join the cgroups first (children inherit them), then the namespace
    local join=""
    for d in "${dirs[@]}"; do join+="echo \$\$ > '$d/cgroup.procs' && "; done
    # its own hostname too (a UTS namespace per command, all named HOST)
    sh -c "${join}exec \"\$@\"" sh "${enter[@]}" ip netns exec "$(ns_of "$h")" \
        unshare --uts -- sh -c 'hostname "$0" && exec "$@"' "$h" env -i PATH="$venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        HOME="$ROOT/$h/home" USER=root LOGNAME=root LANG=C.UTF-8 TMPDIR="$ROOT/$h/tmp" \
        FLEET_TEMP_ROOT="$ROOT/$h/ray" VIRTUAL_ENV="$venv" "$@"
}

# ---- building ----------------------------------------------------------------------------------
new_host() { # HOST IP CPU VENV ROLE QUOTA [KIND]
    local h=$1 ip=$2 cpu=$3 venv=$4 role=$5 pct=$6 kind=${7:-cpu} ns
    ns=$(ns_of "$h")
    mkdir -p -m 700 "$ROOT/$h/home" "$ROOT/$h/tmp" "$ROOT/$h/ray"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # the host's cable: eth0 in the host, its other end (named after the host) on the bridge
    ip link add eth0 netns "$ns" type veth peer name "$h" netns "$NETNS"
    ip -n "$NETNS" link set "$h" master br0 up
    ip -n "$ns" addr add "$ip/24" dev eth0
    ip -n "$ns" link set eth0 up
    make_cgroup "$h" "$cpu" "$pct"
    printf '%s %s %s %s %s %s\n' "$h" "$ip" "$cpu" "$venv" "$role" "$kind" >>"$ROOT/hosts"
}

next_cpu() { # round robin over the CPUs this process may use
    local -a cpus=() parts=()
    local part n
    IFS=',' read -r -a parts <<<"$(awk '/^Cpus_allowed_list/ { print $2 }' /proc/self/status)"
    for part in "${parts[@]}"; do
        for ((n = ${part%-*}; n <= ${part#*-}; n++)); do cpus+=("$n"); done
    done
    n=$(wc -l <"$ROOT/hosts")
    printf '%s' "${cpus[$((n % ${#cpus[@]}))]}"
}

start_worker() { # HOST [KIND]
    local h=$1 kind=${2:-cpu}
    # the token, at the same path as on the head (deploy guide, "The token")
    mkdir -p -m 700 "$ROOT/$h/home/.ray"
    install -m 600 "$ROOT/head/home/.ray/auth_token" "$ROOT/$h/home/.ray/auth_token"
    [[ $(host_field "$h" 5) == coord ]] && return 0
    start_node "$h" "$kind" --address "$(host_field head 2):$HEAD_PORT"
}

start_node() { # HOST KIND START_NODE_ARGS...: start-node.sh, once more after a failed start
    local h=$1 kind=$2 try
    shift 2
    for try in 1 2; do
        # Ray gives a node 30 s to register, which a machine under load can miss
        on_host "$h" "$HERE/start-node.sh" "$kind" "$@" --name "$h" --node-ip "$(host_field "$h" 2)" \
            >>"$ROOT/$h/start.log" 2>&1 && return 0
        ((try == 2)) || {
            log "host $h: start-node.sh failed, once more"
            on_host "$h" "$HERE/start-node.sh" stop --name "$h" >>"$ROOT/$h/start.log" 2>&1 || true
            sleep 2   # killed processes leave the process table (Ray refuses a head while its GCS is listed)
        }
    done
    die "host $h: start-node.sh failed: $(tail -n 5 "$ROOT/$h/start.log")"
}

cmd_up() {
    local workers=1 net=10.213.0 pct=100 venv=${VIRTUAL_ENV:-$REPO/.venv} i
    while (($#)); do
        case $1 in
        --workers) workers=${2:?} && shift 2 ;;
        --net) net=${2:?} && shift 2 ;;
        --cpu-quota) pct=${2:?} && shift 2 ;;
        --venv) venv=${2:?} && shift 2 ;;
        *) die "up: unknown argument '$1'" 2 ;;
        esac
    done
    [[ $workers =~ ^[0-9]+$ ]] && ((workers <= 100)) || die "bad --workers '$workers'" 2
    [[ $net =~ ^10\.[0-9]+\.[0-9]+$ ]] || die "bad --net '$net' (expected 10.X.Y)" 2
    [[ $pct =~ ^[0-9]+$ ]] || die "bad --cpu-quota '$pct'" 2
    [[ -x $venv/bin/ray ]] || die "--venv $venv: no bin/ray there" 2
    ((EUID == 0)) || die "needs root (network namespaces, cgroups)"
    command -v ip >/dev/null || die "needs iproute2 ('ip')"
    ! ip netns list | grep -q "^$NETNS\b" || die "fleet '$FLEET' exists ('$PROG down' first, or set FLEET_NAME)"
    venv=$(cd "$venv" && pwd)
    # a failure half-way removes what was made (FLEET_KEEP=1 keeps it, to read the hosts' logs)
    trap 'rc=$?; if ((rc)) && [[ -z ${FLEET_KEEP:-} ]]; then log "up failed: removing what was made"; cmd_down; fi' EXIT
    mkdir -p -m 700 "$ROOT"
    : >"$ROOT/hosts"
    printf '%s\n' "$pct" >"$ROOT/quota"
    ip netns add "$NETNS"
    ip -n "$NETNS" link add br0 type bridge
    ip -n "$NETNS" link set br0 up
    new_host head "$net.1" "$(next_cpu)" "$venv" head "$pct"
    for ((i = 1; i <= workers; i++)); do new_host "w$i" "$net.$((1 + i))" "$(next_cpu)" "$venv" worker "$pct"; done
    new_host coord "$net.200" "$(next_cpu)" "$venv" coord "$pct"
    # deploy guide step 3: the head (it generates the token)
    start_node head head cpu
    # step 4: the workers; the coordinator's host gets the token only
    for ((i = 1; i <= workers; i++)); do start_worker "w$i" cpu; done
    start_worker coord cpu
    trap - EXIT
    cmd_hosts
}

cmd_add() {
    local h=${1:-} kind=cpu venv net
    shift || true
    [[ $h =~ ^[a-z][a-z0-9]{0,9}$ ]] || die "add: bad host name '$h'" 2
    venv=$(host_field head 4)
    while (($#)); do
        case $1 in
        --kind) kind=${2:?} && shift 2 ;;
        --venv) venv=${2:?} && shift 2 ;;
        *) die "add: unknown argument '$1'" 2 ;;
        esac
    done
    [[ -x $venv/bin/ray ]] || die "--venv $venv: no bin/ray there" 2
    ! awk -v h="$h" '$1 == h { f = 1 } END { exit !f }' "$ROOT/hosts" || die "host $h exists" 2
    net=$(host_field head 2)
    net=${net%.*}
    local n
    n=$(wc -l <"$ROOT/hosts")
    new_host "$h" "$net.$((100 + n))" "$(next_cpu)" "$(cd "$venv" && pwd)" worker "$(cat "$ROOT/quota")" "$kind"
    start_worker "$h" "$kind"
    awk -v h="$h" '$1 == h' "$ROOT/hosts"
}

cmd_link() {
    local h=${1:-} state=${2:-}
    [[ $state == up || $state == down ]] || die "link: expected HOST up|down" 2
    host_field "$h" 2 >/dev/null
    ip -n "$NETNS" link set "$h" "$state"
}

cmd_hosts() {
    [[ -f $ROOT/hosts ]] || die "no fleet '$FLEET'"
    printf '%-8s %-14s %-4s %-6s %s\n' HOST ADDRESS CPU ROLE VENV
    awk '{ printf "%-8s %-14s %-4s %-6s %s\n", $1, $2, $3, $5, $4 }' "$ROOT/hosts"
}

kill_pids() { # PID...: TERM, a grace, KILL
    (($#)) || return 0
    kill -TERM "$@" 2>/dev/null || true
    local t
    for t in 1 2 3 4 5 6 7 8 9 10; do
        kill -0 "$@" 2>/dev/null || return 0
        sleep 0.5
    done
    kill -KILL "$@" 2>/dev/null || true
}

cmd_down() {
    trap - EXIT
    local h ns d
    local -a pids
    # the nodes first, each by its own temp folder (start-node.sh stop), as a user stops one
    if [[ -f $ROOT/hosts ]]; then
        while read -r h _ _ _ role _; do
            [[ $role == coord || ! -d $ROOT/$h/ray/$h ]] ||
                { on_host "$h" "$HERE/start-node.sh" stop --name "$h" >>"$ROOT/$h/stop.log" 2>&1 || true; } &
        done <"$ROOT/hosts"
        wait
    fi
    # then whatever still runs inside this fleet's namespaces or cgroups (drivers, leftovers)
    for ns in $(ip netns list 2>/dev/null | awk -v p="$FLEET-" 'index($1, p) == 1 { print $1 }'); do
        mapfile -t pids < <(ip netns pids "$ns" 2>/dev/null || true)
        kill_pids "${pids[@]}"
    done
    for d in /sys/fs/cgroup/$CG_NAME /sys/fs/cgroup/cpu/$CG_NAME /sys/fs/cgroup/cpuset/$CG_NAME; do
        [[ -d $d ]] || continue
        mapfile -t pids < <(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null || true)
        kill_pids "${pids[@]}"
    done
    remove_cgroups
    for ns in $(ip netns list 2>/dev/null | awk -v p="$FLEET-" 'index($1, p) == 1 { print $1 }'); do
        ip netns del "$ns" 2>/dev/null || true
    done
    [[ ! -d $ROOT ]] || rm -rf "$ROOT"
}

(($# >= 1)) || { usage >&2; exit 2; }
cmd=$1
shift
case $cmd in
up) cmd_up "$@" ;;
add) cmd_add "$@" ;;
exec)
    (($# >= 2)) || die "exec: expected HOST CMD..." 2
    on_host "$@"
    ;;
link) cmd_link "$@" ;;
stop)
    [[ $(host_field "${1:-}" 5) != coord ]] || die "stop: $1 runs no node" 2
    on_host "$1" "$HERE/start-node.sh" stop --name "$1"
    ;;
start)
    case $(host_field "${1:-}" 5) in
    head) start_node head head cpu ;;
    worker) start_worker "$1" "$(host_field "$1" 6)" ;;
    *) die "start: $1 runs no node" 2 ;;
    esac
    ;;
hosts) cmd_hosts ;;
down) cmd_down ;;
-h | --help) usage ;;
*) usage >&2 && exit 2 ;;
esac
