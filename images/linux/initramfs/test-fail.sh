# tmem_test=fail: the host kills the appliance once it sees `TMEM-PHASE workload-start`; I/O must
# fail (not hang), and swapoff, rmmod and poweroff must still complete. After swapon, PID 1 becomes
# /bin/tmem-failtest (memory locked): a shell whose pages were in remote swap would die.
echo 1 > /sys/module/zswap/parameters/enabled
phase insmod
load_kclient; insmod_rc=$?
mkswap /dev/kclient0 >/dev/null
swapon /dev/kclient0; swapon_rc=$?
echo "TMEM-SETUP insmod=$insmod_rc swapon=$swapon_rc"
mib=${tmem_mib:-$(( $(ram_mib) * 3 ))}
exec /bin/tmem-failtest "$mib" "${tmem_stride:-1}" 300
