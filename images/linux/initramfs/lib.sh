# Shared helpers for the tmem client VM tests (sourced by /init).
phase() { echo "TMEM-PHASE $*"; }

# kclient counters as key=value words on one line.
kstats() {
	if [ -r /sys/kernel/debug/kclient/stats ]; then
		while read -r k v; do printf '%s=%s ' "$k" "$v"; done < /sys/kernel/debug/kclient/stats
	fi
}

# Kernel warnings and crashes so far (0 is the only good answer).
oopses() { dmesg | grep -cE 'WARNING:|BUG:|Oops|kernel BUG|Call Trace|general protection|sleeping function called from invalid context|INFO: task .* blocked'; }

vmstat_val() { awk -v k="$1" '$1 == k { print $2 }' /proc/vmstat; }

load_kclient() {
	insmod /lib/modules/kclient.ko remote_target="${tmem_target:-10.0.2.2:7000}" \
		size="${tmem_size:-1G}" io_timeout_ms="${tmem_timeout_ms:-10000}"
}

ram_mib() { awk '$1 == "MemTotal:" { print int($2 / 1024) }' /proc/meminfo; }
