# Shared by tests/node/up and tests/node/down (sourced, with STATE set).

# Machine-wide names: one node per machine.
NODE_NAME=nbo-node
NETNS=nbo-node                 # holds the far end of the node IP's veth
VETH_HOST=nbo-node0
VETH_PEER=nbo-node1
NODE_IP=172.31.250.1           # private, on VETH_HOST only
NODE_PEER_IP=172.31.250.2
BRIDGE=nbo-cni0
POD_CIDR=10.244.0.0/24
FW_CHAIN=NBO-NODE-FORWARD      # iptables filter chain: pods reach only pods
MARKER=/run/notebook-operator-node.state
PV_COUNT=12
CTRD_SOCK=$STATE/containerd/containerd.sock
# Sysctls the node changes (up, kubelet and kube-proxy), restored by down.
SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
  net.ipv4.conf.all.route_localnet vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
PROCS=(kube-router kube-proxy kubelet containerd)

# start NAME CMD...: in the background, detached from our stdout, log to
# logs/NAME.log, pid to pids/NAME.pid.
start() {
  local name=$1; shift
  setsid "$@" </dev/null >>"$STATE/logs/$name.log" 2>&1 &
  echo $! >"$STATE/pids/$name.pid"
  log "started $name (pid $!)"
}
# ours PID: running (not a zombie) with STATE in its command line.
ours() {
  local pid=$1 stat
  stat=$(sed 's/.*) //; s/ .*//' "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ $stat != Z && $stat != X ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$STATE"
}
alive() { [[ -f $STATE/pids/$1.pid ]] && ours "$(<"$STATE/pids/$1.pid")"; }
all_alive() {
  local p; for p in "${PROCS[@]}"; do alive "$p" || return 1; done
  [[ -f $STATE/cluster/pids/kube-apiserver.pid ]] && ours "$(<"$STATE/cluster/pids/kube-apiserver.pid")"
}
# wait_for WHAT NAME CMD...: poll CMD every 0.5s for at most TIMEOUT seconds,
# failing early when process NAME died.
wait_for() {
  local what=$1 name=$2 deadline=$((SECONDS + TIMEOUT)); shift 2
  until "$@" >/dev/null 2>&1; do
    alive "$name" || { log "ERROR: $name exited while waiting for $what"; return 1; }
    ((SECONDS < deadline)) || { log "ERROR: timed out after ${TIMEOUT}s waiting for $what"; return 1; }
    sleep 0.5
  done
  log "$what: ok"
}
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}
# The values before the first up (kept until down restored them).
save_sysctls() {
  [[ -f $STATE/sysctl.saved ]] && return
  local k v
  for k in "${SYSCTLS[@]}"; do
    v=$(sysctl -n "$k" 2>/dev/null) || continue
    printf '%s=%s\n' "$k" "$v"
  done >"$STATE/sysctl.saved.tmp"
  mv "$STATE/sysctl.saved.tmp" "$STATE/sysctl.saved"
}
restore_sysctls() {
  [[ -f $STATE/sysctl.saved ]] || return 0
  local line
  while IFS= read -r line; do
    [[ $(sysctl -n "${line%%=*}" 2>/dev/null) == "${line#*=}" ]] || sysctl -qw "$line" || true
  done <"$STATE/sysctl.saved"
  rm -f "$STATE/sysctl.saved"
}
