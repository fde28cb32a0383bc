# tmem_test=fail: the host kills the appliance once it sees `TMEM-PHASE workload-start`; I/O must
# fail (not hang), and swapoff, rmmod and poweroff must still complete.
echo 1 > /sys/module/zswap/parameters/enabled
phase insmod
load_kclient; insmod_rc=$?
mkswap /dev/kclient0 >/dev/null
swapon /dev/kclient0; swapon_rc=$?
mib=${tmem_mib:-$(( $(ram_mib) * 3 ))}
/bin/tmem-workload "$mib" "${tmem_passes:-1}" 0x746d656d "${tmem_stride:-1}" > /tmp/workload.out &
pid=$!
phase workload-start mib=$mib
# Wait for the workload to die or finish (bounded).
waited=0
while kill -0 $pid 2>/dev/null && [ $waited -lt 300 ]; do sleep 1; waited=$((waited + 1)); done
if kill -0 $pid 2>/dev/null; then kill -9 $pid; fi
wait $pid; workload_rc=$?
cat /tmp/workload.out
phase workload-done rc=$workload_rc waited=$waited
stats=$(kstats)
t0=$(date +%s)
swapoff /dev/kclient0; swapoff_rc=$?
rmmod kclient; rmmod_rc=$?
t1=$(date +%s)
oops=$(dmesg | grep -cE 'BUG:|Oops|kernel BUG|general protection|sleeping function called from invalid context|INFO: task .* blocked')
echo "TMEM-RESULT test=fail insmod=$insmod_rc swapon=$swapon_rc workload=$workload_rc waited=$waited swapoff=$swapoff_rc rmmod=$rmmod_rc teardown_seconds=$((t1 - t0)) oops=$oops $stats"
[ "$oops" = 0 ] || dmesg | tail -80
