# tmem_test=swap: swap on /dev/kclient0 behind zswap, a workload 3x RAM, verify, tear down.
echo 1 > /sys/module/zswap/parameters/enabled
phase insmod
load_kclient; insmod_rc=$?
phase blockdev
blockdev_checks
mkswap /dev/kclient0 >/dev/null; mkswap_rc=$?
swapon /dev/kclient0; swapon_rc=$?
mib=${tmem_mib:-$(( $(ram_mib) * 3 ))}
phase workload-start mib=$mib
t0=$(date +%s)
progress_start
/bin/tmem-workload "$mib" "${tmem_passes:-1}" 0x746d656d "${tmem_stride:-1}" > /tmp/workload.out
workload_rc=$?
t1=$(date +%s)
progress_stop
cat /tmp/workload.out
phase workload-done rc=$workload_rc
stats=$(kstats)
pswpout=$(vmstat_val pswpout); pswpin=$(vmstat_val pswpin)
zswpout=$(vmstat_val zswpout); zswpwb=$(vmstat_val zswpwb)
swapoff /dev/kclient0; swapoff_rc=$?
stats_after=$(kstats)
rmmod kclient; rmmod_rc=$?
oops=$(oopses)
status=pass
for rc in $insmod_rc $mkswap_rc $swapon_rc $workload_rc $swapoff_rc $rmmod_rc; do [ "$rc" = 0 ] || status=fail; done
[ "$oops" = 0 ] || status=fail
[ "$blockio" = ok ] && [ "$discard" = ok ] && [ "$target_rw" = ok ] || status=fail
echo "TMEM-RESULT test=swap status=$status blockio=$blockio discard=$discard target_rw=$target_rw insmod=$insmod_rc mkswap=$mkswap_rc swapon=$swapon_rc workload=$workload_rc swapoff=$swapoff_rc rmmod=$rmmod_rc oops=$oops mib=$mib seconds=$((t1 - t0)) pswpout=$pswpout pswpin=$pswpin zswpout=$zswpout zswpwb=$zswpwb $stats"
echo "TMEM-STATS-AFTER-SWAPOFF $stats_after"
[ "$oops" = 0 ] || dmesg | tail -80
