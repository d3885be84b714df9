#!/usr/bin/env bash
# Start one fleetbench node of a Ray cluster (see deploy/README.md).
#
#   start-node.sh head [KIND|none] [options]        the head; also a benchmark node of KIND (default cpu)
#   start-node.sh KIND --address HEAD:6379 [opts]   a worker node of KIND
#   start-node.sh stop --name NAME                  stop this one node (its processes only)
#
# Every node keeps Ray's files in a private temp folder of its own (0700), so several nodes can
# run on one machine (--local, distinct --ports) and one of them can be stopped alone.
#
# KIND is cpu, nvidia or intel, or several joined by ',' or '+' (e.g. intel,cpu).
# Every benchmark node gets the custom resource bench_slot=1 (one benchmark at a time per node)
# and the Ray node labels
#   fleet.kind=<kinds sorted, deduplicated, joined by '-'>   e.g. cpu, nvidia, cpu-intel
#   fleet.node=<--name, default: short hostname>              stable key of the node across restarts
# Ray label values must match [A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])? (at most 63 characters):
# no ',' and no '+', hence '-' between kinds.
set -euo pipefail

PROG=${0##*/}
KNOWN_KINDS=(cpu intel nvidia)
LABEL_VALUE_RE='^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$'

usage() {
    cat <<EOF
usage: $PROG head [KIND|none] [options] [-- RAY_START_ARGS...]
       $PROG KIND --address HEAD:PORT [options] [-- RAY_START_ARGS...]
       $PROG stop --name NAME [--temp-dir DIR]

KIND: cpu | nvidia | intel, or several joined by ',' or '+' (intel,cpu).
      For head, KIND defaults to \$FLEET_HEAD_KIND or cpu; 'none' starts a head
      that runs no benchmarks (no bench_slot, no fleet.kind label).

options:
  --address HOST:PORT  head's GCS address (workers; default \$RAY_ADDRESS)
  --name NAME          stable node name, label fleet.node (default: short hostname)
  --port PORT          GCS port of the head (default 6379)
  --dashboard          head: start the Ray dashboard (off by default)
  --num-gpus N         override the GPU count (nvidia; default: 'nvidia-smi -L' count);
                       more GPUs than 'nvidia-smi -L' shows is refused without --force
  --force              declare GPUs that this machine does not show
  --node-ip IP         address this node advertises (multi-NIC machines)
  --local              a test fleet on this one machine: advertise 127.0.0.1 and allow several
                       nodes here (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1); give each node its own
                       --name and --ports
  --ports BASE         every port of this node from BASE: node manager BASE, object manager +1,
                       runtime-env agent +2, dashboard agent gRPC +3, metrics +4, dashboard agent
                       HTTP +5, Ray Client server +6 (head), workers BASE+100..BASE+999
  --temp-dir DIR       Ray's temp folder for this node (default \$FLEET_TEMP_ROOT/NAME,
                       FLEET_TEMP_ROOT default /tmp/ray-<uid>); created 0700, must be yours
  --block              stay in the foreground (containers, systemd); SIGTERM stops the node
  --dry-run            print the ray start command and exit
  -h, --help           this text
Anything after '--' is passed to 'ray start' unchanged.

environment:
  RAY_AUTH_MODE         default token (token authentication on)
  RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token   the shared token (in that order)
  FLEETBENCH_CACHE      engine cache dir (default ~/.cache/fleetbench)
  FLEET_NODE_MANAGER_PORT (6700) FLEET_OBJECT_MANAGER_PORT (6701)
  FLEET_RUNTIME_ENV_AGENT_PORT (6702) FLEET_DASHBOARD_AGENT_GRPC_PORT (6703)
  FLEET_METRICS_EXPORT_PORT (6704) FLEET_DASHBOARD_AGENT_LISTEN_PORT (52365)
  FLEET_MIN_WORKER_PORT (10002) FLEET_MAX_WORKER_PORT (19999)
  FLEET_RAY_CLIENT_SERVER_PORT (10001, head) FLEET_DASHBOARD_PORT (8265, head with --dashboard)
  FLEET_TEMP_ROOT       parent of the per-node temp folders (default /tmp/ray-<uid>)
  FLEET_STOP_GRACE_S    seconds between SIGTERM and SIGKILL when stopping a node (default 5)
  RAY_BIN               the ray executable (default: ray on PATH)
EOF
}

die_usage() {
    printf '%s: %s\n' "$PROG" "$1" >&2
    usage >&2
    exit 2
}

die() {
    printf '%s: error: %s\n' "$PROG" "$1" >&2
    exit 1
}

log() {
    printf '%s: %s\n' "$PROG" "$*" >&2
}

is_port() {
    [[ $1 =~ ^[0-9]+$ ]] && ((10#$1 >= 1 && 10#$1 <= 65535))
}

# Normalise a kind list ("intel,cpu", "cpu+intel") into "cpu-intel"; exit 2 on an unknown kind.
normalise_kinds() {
    local raw=$1 part known found
    local -a parts=()
    local -A seen=()
    IFS=',+ ' read -r -a parts <<<"$raw"
    for part in "${parts[@]}"; do
        [[ -n $part ]] || continue
        found=0
        for known in "${KNOWN_KINDS[@]}"; do
            [[ $part == "$known" ]] && found=1
        done
        ((found)) || die_usage "unknown kind '$part' (expected cpu, nvidia or intel)"
        seen[$part]=1
    done
    ((${#seen[@]})) || die_usage "no kind given"
    local out=""
    for known in "${KNOWN_KINDS[@]}"; do # KNOWN_KINDS is sorted
        [[ -n ${seen[$known]:-} ]] && out+=${out:+-}$known
    done
    printf '%s' "$out"
}

default_name() {
    local host
    host=$(hostname -s 2>/dev/null || uname -n)
    host=${host%%.*}
    # Replace what a label value cannot hold, then trim to an alphanumeric start and end.
    host=$(printf '%s' "$host" | tr -c 'A-Za-z0-9._-' '-')
    host=$(printf '%s' "$host" | sed -E 's/^[^A-Za-z0-9]+//; s/[^A-Za-z0-9]+$//')
    printf '%s' "${host:0:63}" | sed -E 's/[^A-Za-z0-9]+$//'
}

gpu_count() {
    if [[ -n ${CUDA_VISIBLE_DEVICES+set} ]]; then
        # The operator restricted the GPUs: count those (Ray numbers them from 0 in this list).
        local -a visible=()
        IFS=',' read -r -a visible <<<"$CUDA_VISIBLE_DEVICES"
        if [[ -z $CUDA_VISIBLE_DEVICES || ${visible[0]} == -1 || ${visible[0]} == NoDevFiles ]]; then
            printf '0'
        else
            printf '%s' "${#visible[@]}"
        fi
        return 0
    fi
    command -v nvidia-smi >/dev/null 2>&1 ||
        die "kind nvidia: nvidia-smi not found (install the NVIDIA driver, or pass --num-gpus N)"
    local listing
    listing=$(nvidia-smi -L) || die "kind nvidia: 'nvidia-smi -L' failed (is the driver loaded?)"
    # One "GPU <i>: ..." line per physical GPU (MIG devices are indented lines below them).
    grep -c '^GPU ' <<<"$listing" || true
}

token_present() {
    if [[ -n ${RAY_AUTH_TOKEN:-} ]]; then
        return 0
    fi
    if [[ -n ${RAY_AUTH_TOKEN_PATH:-} ]]; then
        # Ray aborts when RAY_AUTH_TOKEN_PATH is set but unreadable or empty.
        [[ -r $RAY_AUTH_TOKEN_PATH && -s $RAY_AUTH_TOKEN_PATH ]] ||
            die "RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH is not a readable, non-empty file"
        return 0
    fi
    [[ -s ${HOME:-/nonexistent}/.ray/auth_token ]]
}

# ---- arguments --------------------------------------------------------------------------------
(($# >= 1)) || die_usage "missing ROLE"
case $1 in
-h | --help)
    usage
    exit 0
    ;;
head)
    role="head"
    shift
    if (($# >= 1)) && [[ $1 != -* ]]; then
        kind_arg=$1
        shift
    else
        kind_arg=${FLEET_HEAD_KIND:-cpu}
    fi
    ;;
stop)
    role="stop"
    kind_arg=""
    shift
    ;;
-*) die_usage "missing ROLE before '$1'" ;;
*)
    role="worker"
    kind_arg=$1
    shift
    ;;
esac

address=""
name=""
port=""
dashboard=0
num_gpus=""
node_ip=""
block=0
dry_run=0
force=0
local_fleet=0
ports=""
temp_dir=""
extra=()

need_value() { # option, remaining-count
    (($2 >= 2)) || die_usage "option $1 needs a value"
}

while (($#)); do
    case $1 in
    --address) need_value "$1" $# && address=$2 && shift 2 ;;
    --address=*) address=${1#*=} && shift ;;
    --name) need_value "$1" $# && name=$2 && shift 2 ;;
    --name=*) name=${1#*=} && shift ;;
    --port) need_value "$1" $# && port=$2 && shift 2 ;;
    --port=*) port=${1#*=} && shift ;;
    --num-gpus) need_value "$1" $# && num_gpus=$2 && shift 2 ;;
    --num-gpus=*) num_gpus=${1#*=} && shift ;;
    --node-ip) need_value "$1" $# && node_ip=$2 && shift 2 ;;
    --node-ip=*) node_ip=${1#*=} && shift ;;
    --ports) need_value "$1" $# && ports=$2 && shift 2 ;;
    --ports=*) ports=${1#*=} && shift ;;
    --temp-dir) need_value "$1" $# && temp_dir=$2 && shift 2 ;;
    --temp-dir=*) temp_dir=${1#*=} && shift ;;
    --local) local_fleet=1 && shift ;;
    --force) force=1 && shift ;;
    --dashboard) dashboard=1 && shift ;;
    --block) block=1 && shift ;;
    --dry-run) dry_run=1 && shift ;;
    -h | --help) usage && exit 0 ;;
    --)
        shift
        extra=("$@")
        break
        ;;
    *) die_usage "unknown argument '$1'" ;;
    esac
done

# The node's private temp folder: one per node, so nodes on one machine keep apart.
node_temp_dir() {
    printf '%s' "${temp_dir:-${FLEET_TEMP_ROOT:-/tmp/ray-$(id -u)}/${name:-head}}"
}

# Create DIR (and a missing parent) 0700 and check that nobody else can write it.
private_dir() {
    local dir=$1 parent
    parent=$(dirname "$dir")
    [[ -d $parent ]] || mkdir -p -m 700 "$parent"
    [[ -d $dir ]] || mkdir -m 700 "$dir" || die "cannot create temp folder $dir"
    [[ ! -L $dir ]] || die "temp folder $dir is a symlink"
    [[ $(stat -c %u "$dir") == "$(id -u)" ]] || die "temp folder $dir belongs to another user"
    chmod 700 "$dir"
}

# The processes of the node whose temp folder is DIR: those naming it, the head's Ray Client
# server (by its port, recorded at start), and all their descendants (workers, agents).
node_pids() {
    local dir=$1 pid todo=() all=() kids
    mapfile -t todo < <(pgrep -f -- "$dir/" || true)
    if [[ -f $dir/fleet-client-port ]]; then
        mapfile -t -O "${#todo[@]}" todo < <(pgrep -f -- "ray.util.client.server .*--port=$(<"$dir/fleet-client-port") " || true)
    fi
    while ((${#todo[@]})); do
        pid=${todo[0]}
        todo=("${todo[@]:1}")
        [[ -n $pid && " ${all[*]} " != *" $pid "* && $pid != "$$" ]] || continue
        all+=("$pid")
        mapfile -t kids < <(pgrep -P "$pid" || true)
        todo+=("${kids[@]}")
    done
    printf '%s\n' "${all[@]}"
}

# stop --name NAME: end exactly the processes of that node (found by its own temp folder).
stop_node() {
    local dir=$1 grace=${FLEET_STOP_GRACE_S:-5} pids
    [[ -d $dir ]] || die "no node with temp folder $dir (is --name right? --temp-dir?)"
    pids=$(node_pids "$dir")
    if [[ -z $pids ]]; then
        log "node ${name:-head}: no process running under $dir"
        return 0
    fi
    log "stopping node ${name:-head}: $(wc -w <<<"$pids") process(es) under $dir"
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    local until=$((SECONDS + grace))
    while ((SECONDS < until)) && [[ -n $(node_pids "$dir") ]]; do
        sleep 0.2
    done
    pids=$(node_pids "$dir")
    # shellcheck disable=SC2086
    [[ -z $pids ]] || kill -KILL $pids 2>/dev/null || true
    log "node ${name:-head} stopped"
}

if [[ $role == stop ]]; then
    [[ -n $name || -n $temp_dir ]] || die_usage "stop needs --name NAME (or --temp-dir DIR)"
    [[ -z $name || $name =~ $LABEL_VALUE_RE ]] || die_usage "bad --name '$name'"
    stop_node "$(node_temp_dir)"
    exit 0
fi

if [[ $role == head && $kind_arg == none ]]; then
    kinds=""
else
    kinds=$(normalise_kinds "$kind_arg") || exit $?
fi

if [[ $role == head ]]; then
    [[ -z $address ]] || die_usage "--address is for worker nodes; the head listens on --port"
    port=${port:-6379}
    is_port "$port" || die_usage "bad --port '$port'"
else
    [[ -z $port ]] || die_usage "--port is for the head only"
    ((dashboard == 0)) || die_usage "--dashboard is for the head only"
    address=${address:-${RAY_ADDRESS:-}}
    [[ -n $address ]] || die_usage "a worker node needs --address HEAD:PORT (or RAY_ADDRESS)"
    if ! [[ $address =~ ^[^:/[:space:]]+:[0-9]+$ ]] || ! is_port "${address##*:}"; then
        die_usage "bad --address '$address' (expected HOST:PORT)"
    fi
fi

if [[ -n $kinds && -z $name ]]; then
    name=$(default_name)
    [[ -n $name ]] || die "cannot derive a node name from the hostname; pass --name"
fi
if [[ -n $name && ! $name =~ $LABEL_VALUE_RE ]]; then
    die_usage "bad --name '$name': 1-63 characters [A-Za-z0-9_.-], starting and ending alphanumeric"
fi

if [[ -n $num_gpus ]]; then
    [[ $num_gpus =~ ^[0-9]+$ ]] || die_usage "bad --num-gpus '$num_gpus'"
fi
if [[ -n $ports ]]; then
    { is_port "$ports" && ((10#$ports + 999 <= 65535)); } || die_usage "bad --ports '$ports' (BASE+999 must be a port)"
fi

# ---- environment ------------------------------------------------------------------------------
RAY_BIN=${RAY_BIN:-ray}
export FLEETBENCH_CACHE=${FLEETBENCH_CACHE:-${HOME:-/root}/.cache/fleetbench}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
# Ray starts its workers at nice 15: a timed job would then give way to every other process on the node
export RAY_worker_niceness=${RAY_worker_niceness:-0}
if ((local_fleet)); then
    # Ray's switch that lets several nodes of one cluster run on one machine (Linux has it on by
    # default; a shell that set it to 0 for a loopback-only single node would refuse a worker).
    export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1
    node_ip=${node_ip:-127.0.0.1}
fi
tdir=$(node_temp_dir)

# ---- the ray start command --------------------------------------------------------------------
cmd=("$RAY_BIN" start)
if [[ $role == head ]]; then
    cmd+=(--head --port "$port" --disable-usage-stats)
    if ((dashboard)); then
        cmd+=(--include-dashboard true)
    else
        cmd+=(--include-dashboard false)
    fi
else
    cmd+=(--address "$address")
fi
[[ -z $node_ip ]] || cmd+=(--node-ip-address "$node_ip")

# Fixed ports, so that a firewall between the machines can be written down (deploy/README.md).
if [[ -n $ports ]]; then
    b=$((10#$ports))
    p_nm=$b p_om=$((b + 1)) p_re=$((b + 2)) p_dg=$((b + 3)) p_me=$((b + 4)) p_dl=$((b + 5))
    p_cl=$((b + 6)) p_wmin=$((b + 100)) p_wmax=$((b + 999))
else
    p_nm=${FLEET_NODE_MANAGER_PORT:-6700} p_om=${FLEET_OBJECT_MANAGER_PORT:-6701}
    p_re=${FLEET_RUNTIME_ENV_AGENT_PORT:-6702} p_dg=${FLEET_DASHBOARD_AGENT_GRPC_PORT:-6703}
    p_me=${FLEET_METRICS_EXPORT_PORT:-6704} p_dl=${FLEET_DASHBOARD_AGENT_LISTEN_PORT:-52365}
    p_cl=${FLEET_RAY_CLIENT_SERVER_PORT:-10001}
    p_wmin=${FLEET_MIN_WORKER_PORT:-10002} p_wmax=${FLEET_MAX_WORKER_PORT:-19999}
fi
cmd+=(
    --node-manager-port "$p_nm"
    --object-manager-port "$p_om"
    --runtime-env-agent-port "$p_re"
    --dashboard-agent-grpc-port "$p_dg"
    --metrics-export-port "$p_me"
    --dashboard-agent-listen-port "$p_dl"
    --min-worker-port "$p_wmin"
    --max-worker-port "$p_wmax"
    --temp-dir "$tdir"
)
if [[ $role == head ]]; then
    cmd+=(--ray-client-server-port "$p_cl")
    ((dashboard == 0)) || cmd+=(--dashboard-port "${FLEET_DASHBOARD_PORT:-8265}")
fi

if [[ -n $kinds ]]; then
    labels="fleet.kind=$kinds,fleet.node=$name"
    cmd+=(--labels "$labels" --resources '{"bench_slot": 1}')
    if [[ -n $num_gpus && $num_gpus != 0 && ,${kinds//-/,}, == *,nvidia,* ]] && ((force == 0)); then
        seen=0
        if [[ -n ${CUDA_VISIBLE_DEVICES+set} ]] || command -v nvidia-smi >/dev/null 2>&1; then
            seen=$(gpu_count 2>/dev/null || printf '0')
        fi
        ((num_gpus <= seen)) || die "kind nvidia: --num-gpus $num_gpus but this machine shows $seen GPU(s)
('nvidia-smi -L', or CUDA_VISIBLE_DEVICES when set); pass --force to declare them anyway"
    fi
    if [[ -z $num_gpus && ,${kinds//-/,}, == *,nvidia,* ]]; then
        if ((dry_run)) && [[ -z ${CUDA_VISIBLE_DEVICES+set} ]] && ! command -v nvidia-smi >/dev/null 2>&1; then
            num_gpus="<nvidia-smi -L count>"
        else
            num_gpus=$(gpu_count)
            ((num_gpus > 0)) || die "kind nvidia: no GPU visible ('nvidia-smi -L', or CUDA_VISIBLE_DEVICES when set)"
        fi
    fi
elif [[ -n $name ]]; then
    cmd+=(--labels "fleet.node=$name")
fi
[[ -z $num_gpus ]] || cmd+=(--num-gpus "$num_gpus")
((block == 0)) || cmd+=(--block)
cmd+=("${extra[@]}")

if ((dry_run)); then
    printf 'RAY_AUTH_MODE=%q FLEETBENCH_CACHE=%q' "$RAY_AUTH_MODE" "$FLEETBENCH_CACHE"
    ((local_fleet == 0)) || printf ' RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=%s' "$RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    printf ' %q' "${cmd[@]}"
    printf '\n'
    exit 0
fi

command -v "$RAY_BIN" >/dev/null 2>&1 || die "'$RAY_BIN' not found (pip install fleetbench, or set RAY_BIN)"
umask 077   # the token, the cache and Ray's temp files: this user's only
mkdir -p -m 700 "$FLEETBENCH_CACHE"
private_dir "$tdir"
[[ $role != head ]] || printf '%s\n' "$p_cl" >"$tdir/fleet-client-port"

# ---- token authentication ---------------------------------------------------------------------
if [[ $RAY_AUTH_MODE == token ]]; then
    if ! token_present; then
        if [[ $role == head ]]; then
            log "no Ray auth token found: generating ~/.ray/auth_token"
            mkdir -p -m 700 "${HOME:-/nonexistent}/.ray"
            "$RAY_BIN" get-auth-token --generate >/dev/null
        else
            die "no Ray auth token: copy the head's ~/.ray/auth_token to this machine (same path),
or set RAY_AUTH_TOKEN_PATH to a file holding it, or RAY_AUTH_TOKEN to its value"
        fi
    fi
else
    log "WARNING: RAY_AUTH_MODE=$RAY_AUTH_MODE: token authentication is OFF; anyone who can reach"
    log "WARNING: this node's ports can run code on it. Unset RAY_AUTH_MODE to turn it back on."
fi

# The token file: readable by this user only (Ray writes it 0644).
for token_file in "${RAY_AUTH_TOKEN_PATH:-}" "${HOME:-/nonexistent}/.ray/auth_token"; do
    if [[ -n $token_file && -f $token_file && -O $token_file ]]; then
        chmod 600 "$token_file"
    fi
done

log "role=$role kinds=${kinds:-none} name=${name:-} cache=$FLEETBENCH_CACHE auth=$RAY_AUTH_MODE temp=$tdir"
if ((block == 0)); then
    exec "${cmd[@]}"
fi
# --block: stay in the foreground; SIGTERM or SIGINT stops this node (and only it) promptly.
"${cmd[@]}" &
ray_pid=$!
on_signal() {
    trap - TERM INT
    kill -TERM "$ray_pid" 2>/dev/null || true
    stop_node "$tdir"
    wait "$ray_pid" 2>/dev/null || true
    exit 143
}
trap on_signal TERM INT
wait "$ray_pid"
