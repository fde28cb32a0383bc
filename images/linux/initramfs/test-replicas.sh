# tmem_test=replicas: swap behind zswap to several appliances with replicas, while the host kills,
# restarts or stops them (qemu-tests/tests/kclient_replicas.rs). The verified workload runs
# tmem_passes passes; every 2 s a `TMEM-KSTAT key=value ...` line shows the replica counters, which
# the host watches to time its disturbances. Ends with `TMEM-RESULT test=replicas ...`.
echo 1 > /sys/module/zswap/parameters/enabled
phase insmod
load_kclient; insmod_rc=$?
mkswap /dev/kclient0 >/dev/null; mkswap_rc=$?
swapon /dev/kclient0; swapon_rc=$?
echo "TMEM-SETUP insmod=$insmod_rc swapon=$swapon_rc"
mib=${tmem_mib:-$(( $(ram_mib) * 3 ))}
kstat_line() {
	kstats_matching '^(degraded_extents|unreadable_pages|pages_repaired|appliance_downs|lost_pages|failed_requests|pages_stored|stalls|read_retries|replica_write_failures|timeouts)$|^appliance[.][0-9]+[.](state|pages_held|pages_stale|pools_lost)$'
}
( while :; do echo "TMEM-KSTAT $(kstat_line)"; sleep 2; done ) &
mon=$!
phase workload-start mib=$mib
# tmem_killers=N: meanwhile, N times, a second workload swaps for 2 s and is SIGKILLed (as the OOM
# killer does to swapping tasks): that must break no connection (no reset, no timeout).
killer=
if [ -n "$tmem_killers" ]; then
	(
		i=0
		while [ "$i" -lt "$tmem_killers" ] && [ ! -e /tmp/workload-done ]; do
			/bin/tmem-workload 48 4 0x6b696c6c 1 >/dev/null 2>&1 &
			victim=$!
			sleep 2
			kill -9 "$victim" 2>/dev/null
			wait "$victim" 2>/dev/null
			i=$((i + 1))
			echo "$i" > /tmp/kills
		done
	) &
	killer=$!
fi
t0=$(date +%s)
/bin/tmem-workload "$mib" "${tmem_passes:-1}" 0x746d656d "${tmem_stride:-1}" > /tmp/workload.out
workload_rc=$?
t1=$(date +%s)
touch /tmp/workload-done
[ -n "$killer" ] && wait "$killer"
kills=$(cat /tmp/kills 2>/dev/null || echo 0)
kill $mon 2>/dev/null
cat /tmp/workload.out
phase workload-done rc=$workload_rc
echo "TMEM-KSTAT $(kstat_line)"
stats=$(kstats)
oom=$(dmesg | grep -c 'invoked oom-killer')
swapoff /dev/kclient0; swapoff_rc=$?
rmmod kclient; rmmod_rc=$?
oops=$(oopses)
status=pass
for rc in $insmod_rc $mkswap_rc $swapon_rc $workload_rc $swapoff_rc $rmmod_rc; do [ "$rc" = 0 ] || status=fail; done
[ "$oops" = 0 ] && [ "$oom" = 0 ] || status=fail
echo "TMEM-RESULT test=replicas status=$status insmod=$insmod_rc swapon=$swapon_rc workload=$workload_rc swapoff=$swapoff_rc rmmod=$rmmod_rc oops=$oops oom=$oom kills=$kills mib=$mib seconds=$((t1 - t0)) $stats"
[ "$oops" = 0 ] || dmesg | tail -80
