# Shared helpers for the tmem client VM tests (sourced by /init).
phase() { echo "TMEM-PHASE $*"; }

# The kclient counters whose names match the extended regex $1, as key=value words.
kstats_matching() {
	awk -v re="$1" '$1 ~ re { printf "%s=%s ", $1, $2 }' /sys/kernel/debug/kclient/stats 2>/dev/null
}

# kclient counters as key=value words on one line.
kstats() {
	if [ -r /sys/kernel/debug/kclient/stats ]; then
		while read -r k v; do printf '%s=%s ' "$k" "$v"; done < /sys/kernel/debug/kclient/stats
	fi
}

# Kernel warnings and crashes so far (0 is the only good answer).
oopses() { dmesg | grep -cE 'WARNING:|BUG:|Oops|kernel BUG|Call Trace|general protection|sleeping function called from invalid context|INFO: task .* blocked'; }

vmstat_val() { awk -v k="$1" '$1 == k { print $2 }' /proc/vmstat; }

# Loads kclient with the tmem_* settings; extra arguments are passed on (e.g. cache_backing=).
load_kclient() {
	set -- "$@" remote_target="${tmem_target:-10.0.2.2:7000}" size="${tmem_size:-1G}" \
		io_timeout_ms="${tmem_timeout_ms:-10000}" compress="${tmem_compress:-0}" \
		nr_conns="${tmem_conns:-0}"
	# With a key the sessions are authenticated and encrypted; without one kclient must be told
	# (insecure=1), as an operator would have to.
	if [ -n "$tmem_key" ]; then
		set -- "$@" client_id="$tmem_client_id" key="$tmem_key"
	else
		set -- "$@" insecure=1
	fi
	[ -n "$tmem_replicas" ] && set -- "$@" replicas="$tmem_replicas"
	[ -n "$tmem_encrypt" ] && set -- "$@" encrypt_pages="$tmem_encrypt"
	[ -n "$tmem_down_ms" ] && set -- "$@" down_after_ms="$tmem_down_ms"
	[ -n "$tmem_spill" ] && set -- "$@" spill="$tmem_spill"
	insmod /lib/modules/kclient.ko "$@"
}

ram_mib() { awk '$1 == "MemTotal:" { print int($2 / 1024) }' /proc/meminfo; }

# Plain block I/O on /dev/kclient0 before it becomes swap: write + read back (through the appliance),
# discard -> zeros, and the remote_target parameter (read, reject garbage, rewrite). Sets
# blockio, discard and target_rw to ok or fail.
blockdev_checks() {
	dev=/dev/kclient0
	dd if=/dev/urandom of=/tmp/blk.in bs=4096 count=64 2>/dev/null
	dd if=/tmp/blk.in of=$dev bs=4096 seek=100 conv=fsync 2>/dev/null
	echo 3 > /proc/sys/vm/drop_caches
	dd if=$dev of=/tmp/blk.out bs=4096 skip=100 count=64 2>/dev/null
	if cmp -s /tmp/blk.in /tmp/blk.out; then blockio=ok; else blockio=fail; fi
	dd if=/dev/zero of=/tmp/blk.zero bs=4096 count=64 2>/dev/null
	if blkdiscard -o $((100 * 4096)) -l $((64 * 4096)) $dev; then
		echo 3 > /proc/sys/vm/drop_caches
		dd if=$dev of=/tmp/blk.out bs=4096 skip=100 count=64 2>/dev/null
		if cmp -s /tmp/blk.zero /tmp/blk.out; then discard=ok; else discard=fail; fi
	else
		discard=fail
	fi
	param=/sys/module/kclient/parameters/remote_target
	old=$(cat $param)
	target_rw=ok
	[ "$old" = "${tmem_target:-10.0.2.2:7000}" ] || target_rw=fail
	if echo "not-an-address" > $param 2>/dev/null; then target_rw=fail; fi
	[ "$(cat $param)" = "$old" ] || target_rw=fail
	echo "$old" > $param || target_rw=fail
	# The connections move to the (same) target: wait until one is back (bounded).
	n=0
	while [ $n -lt 100 ] && ! grep -q 'connections_up [1-9]' /sys/kernel/debug/kclient/stats; do
		sleep 0.1; n=$((n + 1))
	done
	grep -q 'connections_up [1-9]' /sys/kernel/debug/kclient/stats || target_rw=fail
	echo "TMEM-BLOCKDEV blockio=$blockio discard=$discard target_rw=$target_rw"
}

# A counter of /proc/net/snmp or /proc/net/netstat ($1) by its section ($2, e.g. Tcp) and name ($3):
# each section is a line of names followed by a line of values.
net_val() { awk -v s="$2:" -v k="$3" '$1 == s { if (!n) { for (i = 2; i <= NF; i++) if ($i == k) c = i; n = 1 } else { print $c; exit } }' "$1"; }

# One `TMEM-PROGRESS` line: uptime, swap traffic, free memory, kclient requests and resets, TCP
# retransmissions and receive drops.
progress_line() {
	echo "TMEM-PROGRESS up=$(cut -d' ' -f1 /proc/uptime)s" \
		"pswpin=$(vmstat_val pswpin) pswpout=$(vmstat_val pswpout)" \
		"free_kb=$(awk '$1 == "MemFree:" { print $2 }' /proc/meminfo)" \
		"$(kstats_matching '^(requests|inflight_requests|stalls|reconnects|timeouts|failed_requests)$')tcp_retrans=$(net_val /proc/net/snmp Tcp RetransSegs)" \
		"tcp_timeouts=$(net_val /proc/net/netstat TcpExt TCPTimeouts)" \
		"pfmemalloc_drops=$(net_val /proc/net/netstat TcpExt PFMemallocDrop)" \
		"rx_dropped=$(cat /sys/class/net/eth0/statistics/rx_dropped 2>/dev/null)"
}

# Every 30 s until progress_stop: a progress_line, so a console log that ends in a timeout shows
# whether the workload was crawling or stuck, and where.
progress_start() {
	( while sleep 30; do progress_line; done ) &
	progress_pid=$!
}
progress_stop() { kill "$progress_pid" 2>/dev/null; wait "$progress_pid" 2>/dev/null; }
