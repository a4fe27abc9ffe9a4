#!/bin/busybox sh
# PID 1 of a kernel-matrix VM (`cargo xtask test --kernel NAME`). It mounts
# what a host gives the agent, runs each check and reports on the serial
# console in lines the host parses, then powers off. The protocol:
#   KMATRIX init RELEASE         /init was reached
#   KMATRIX exit NAME CODE       a command's exit status
#   KMATRIX pid NAME PID         a process the spans must name
#   KMATRIX begin NAME ... KMATRIX end NAME   a file's content
#   KMATRIX done                 every check ran
# Judging is the host's: this script only reports.

/bin/busybox --install -s /bin
export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t debugfs debugfs /sys/kernel/debug
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
mkdir -p /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
hostname kmatrix

echo "KMATRIX init $(uname -r)"

# Modules the cloud kernels build as such (tc's clsact and BPF classifier,
# veth), copied from the same kernel package; absent when built in.
for module in /lib/modules/*.ko; do
    [ -e "$module" ] || continue
    insmod "$module" || echo "KMATRIX note insmod $module failed"
done

send() {
    echo "KMATRIX begin $1"
    cat "$2" 2>/dev/null
    echo
    echo "KMATRIX end $1"
}

# Busybox's ash has no `timeout` for shell functions: a bounded loop.
wait_until() { # TRIES COMMAND...: try every 0.5 s; status 1 when all failed
    tries=$1
    shift
    while ! "$@" >/dev/null 2>&1; do
        tries=$((tries - 1))
        [ "$tries" -gt 0 ] || return 1
        sleep 0.5
    done
}

# Check 1: what the kernel offers, each feature tried for real.
/bin/selfops probe --json >/tmp/probe.json 2>/tmp/probe.log
echo "KMATRIX exit probe $?"
send probe.json /tmp/probe.json
send probe.log /tmp/probe.log

# Check 2: the agent running, one HTTP request through busybox httpd and
# wget, and the agent's spans.
mkdir -p /tmp/agent /www
echo "selfops kernel matrix" >/www/kmatrix.html
# The TLS server runs before the agent starts: the agent sets its OpenSSL
# uprobes on the libssl files that running processes have mapped.
(cd /www && exec openssl s_server -quiet -accept 127.0.0.1:8443 -WWW \
    -cert /etc/kmatrix-tls/cert.pem -key /etc/kmatrix-tls/key.pem) \
    >/tmp/tls-server.log 2>&1 &
echo "KMATRIX pid tls-server $!"
cat >/tmp/agent/selfops.yaml <<EOF
data_dir: /tmp/agent/data
telemetry:
  listen: 127.0.0.1:9464
export:
  batch_timeout: 200ms
# The limiter loaded and hooked to lo by a playbook that never fires (a CPU
# above 1000 %): its programs must pass this kernel's verifier, or be
# switched off with one warning where the kernel cannot carry them.
actuation:
  interfaces: [lo]
  mode: enforce
  playbooks:
    - name: kmatrix-limiter-load
      when: { signal: host.cpu.utilization, above: "1000%", for: 1s }
      do: { throttle: { port: 9, per_second: 1 } }
      ttl: 1s
EOF
# What this kernel's entry in the matrix adds (capabilities it cannot carry).
cat /etc/kmatrix-agent.yaml >>/tmp/agent/selfops.yaml 2>/dev/null
/bin/selfops run --config /tmp/agent/selfops.yaml 2>/tmp/agent/agent.log &
agent=$!
# Serving /metrics is the agent's signal that every sensor is attached;
# an agent that exits during start-up ends the wait at once.
serving() {
    kill -0 "$agent" || return 0
    wget -q -O /dev/null http://127.0.0.1:9464/metrics
}
# Not served in time counts as not ready, as does an agent that exited.
wait_until 240 serving && kill -0 "$agent" 2>/dev/null
ready=$?
echo "KMATRIX exit agent-ready $ready"
if [ "$ready" = 0 ]; then
    # In the foreground, so that $! is the serving process; the spans must
    # name these pids.
    httpd -f -p 127.0.0.1:8080 -h /www &
    echo "KMATRIX pid httpd $!"
    # Listening, seen without a request of our own (it would be traced).
    listening() { netstat -ltn | grep -q '127.0.0.1:8080 '; }
    wait_until 20 listening
    echo "KMATRIX exit httpd-listening $?"
    wget -q -O /tmp/body http://127.0.0.1:8080/kmatrix.html &
    client=$!
    echo "KMATRIX pid wget $client"
    wait "$client"
    echo "KMATRIX exit wget $?"
    wait_until 60 grep -q kmatrix.html /tmp/agent/data/traces.jsonl
    echo "KMATRIX exit spans-written $?"

    # The same request over TLS, from openssl's client to openssl's server.
    printf 'GET /kmatrix.html HTTP/1.0\r\nHost: kmatrix\r\n\r\n' |
        openssl s_client -quiet -ign_eof -connect 127.0.0.1:8443 \
            >/tmp/tls-body 2>/tmp/tls-client.log &
    client=$!
    echo "KMATRIX pid tls-client $client"
    wait "$client"
    echo "KMATRIX exit tls-client $?"
    # Two mentions are the client span's server and peer port; a third,
    # the server span's server port, is given a few seconds more.
    tls_spans() { [ "$(grep -o '"8443"' /tmp/agent/data/traces.jsonl | wc -l)" -ge "$1" ]; }
    wait_until 60 tls_spans 2 && wait_until 8 tls_spans 3
    echo "KMATRIX exit tls-spans-written $?"
    send tls-client.log /tmp/tls-client.log
fi
# The agent's own counters, kept with the other files for diagnosis.
wget -q -O /tmp/agent/metrics.txt http://127.0.0.1:9464/metrics
send metrics.txt /tmp/agent/metrics.txt
kill -TERM "$agent"
wait "$agent"
echo "KMATRIX exit agent $?"
send agent.log /tmp/agent/agent.log
send traces.jsonl /tmp/agent/data/traces.jsonl

# Check 3: the socket sensor on each hook, one agent at a time, with the
# kernel's program statistics on: the same requests through each, its
# spans, what its programs cost (from its /metrics) and its stop time.
# KMATRIX tier HOOK STOP_START STOP_END REQUESTS
if [ "$ready" = 0 ]; then
    echo 1 >/proc/sys/kernel/bpf_stats_enabled
    for hook in fentry kprobe syscalls raw_syscalls raw_exit; do
        sed "s#/tmp/agent/data#/tmp/tier-$hook#" /tmp/agent/selfops.yaml >/tmp/tier-$hook.yaml
        SELFOPS_SOCKET_HOOK=$hook /bin/selfops run --config /tmp/tier-$hook.yaml \
            2>/tmp/tier-$hook.log &
        agent=$!
        wait_until 240 serving && kill -0 "$agent" 2>/dev/null
        echo "KMATRIX exit tier-$hook-ready $?"
        requests=40
        n=0
        while [ "$n" -lt "$requests" ]; do
            wget -q -O /dev/null http://127.0.0.1:8080/kmatrix.html
            n=$((n + 1))
        done
        wait_until 60 grep -q kmatrix.html "/tmp/tier-$hook/traces.jsonl"
        echo "KMATRIX exit tier-$hook-spans $?"
        wget -q -O "/tmp/tier-$hook.metrics" http://127.0.0.1:9464/metrics
        start=$(cut -d' ' -f1 /proc/uptime)
        kill -TERM "$agent"
        wait "$agent"
        status=$?
        echo "KMATRIX tier $hook $start $(cut -d' ' -f1 /proc/uptime) $requests"
        echo "KMATRIX exit tier-$hook-stop $status"
        send "tier-$hook.metrics" "/tmp/tier-$hook.metrics"
        # The warnings, and of a refused program's verifier log (the lines
        # after "Verifier output" up to the next log line, which may begin
        # with a colour code) its last 40, where the verifier says why.
        awk 'function flush(i) {
                for (i = (n > 40 ? n - 39 : 1); v && i <= n; i++) print "  | " buf[i % 40]
                v = 0
            }
            /^[^ ]*[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T/ { flush() }
            / (WARN|ERROR) |hook/ { print }
            /Verifier output/ { v = 1; n = 0; next }
            v { n++; buf[n % 40] = $0 }
            END { flush() }' \
            "/tmp/tier-$hook.log" >"/tmp/tier-$hook.notes"
        send "tier-$hook.log" "/tmp/tier-$hook.notes"
    done
    echo 0 >/proc/sys/kernel/bpf_stats_enabled
fi

echo "KMATRIX done"
poweroff -f
