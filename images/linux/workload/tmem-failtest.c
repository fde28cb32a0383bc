// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * tmem-failtest: PID 1 for the "appliance dies during I/O" test. Once the appliance is gone, any
 * process whose pages sit in remote swap dies when it touches them; if that were the init shell the
 * kernel would panic. So this runs as PID 1 with all its memory locked, and does everything after
 * the workload starts with plain system calls:
 *
 *   tmem-failtest MIB STRIDE WAIT_SECONDS
 *
 * runs /bin/tmem-workload MIB 1 SEED STRIDE, waits for it (at most WAIT_SECONDS, then kills it),
 * then swapoff /dev/kclient0, rmmod kclient, and prints
 *   TMEM-RESULT test=fail workload=RC waited=S swapoff=RC rmmod=RC teardown_seconds=S oops=N <kclient counters>
 * and powers off.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/klog.h>
#include <sys/mman.h>
#include <sys/reboot.h>
#include <sys/swap.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char stats[8192];
static char logbuf[1 << 20];

static long now_s(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec;
}

/* kclient's debugfs counters as "key=value " words. */
static void read_stats(void)
{
	char raw[8192];
	int fd = open("/sys/kernel/debug/kclient/stats", O_RDONLY);
	ssize_t n = fd >= 0 ? read(fd, raw, sizeof(raw) - 1) : -1;
	size_t o = 0;
	char *line, *save;

	if (fd >= 0)
		close(fd);
	stats[0] = 0;
	if (n <= 0)
		return;
	raw[n] = 0;
	for (line = strtok_r(raw, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *sp = strchr(line, ' ');

		if (!sp)
			continue;
		*sp = '=';
		o += snprintf(stats + o, sizeof(stats) - o, "%s ", line);
		if (o >= sizeof(stats))
			break;
	}
}

/* Kernel crashes, warnings and hangs in the kernel log. */
static int count_problems(void)
{
	static const char *bad[] = { "BUG:", "Oops", "kernel BUG", "general protection",
				     "WARNING:", "sleeping function called from invalid context",
				     "blocked for more than", "soft lockup" };
	int n = klogctl(3 /* SYSLOG_ACTION_READ_ALL */, logbuf, sizeof(logbuf) - 1), count = 0;
	char *line, *save;
	size_t i;

	if (n < 0)
		return -1;
	logbuf[n] = 0;
	for (line = strtok_r(logbuf, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
		for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
			if (strstr(line, bad[i])) {
				printf("PROBLEM: %s\n", line);
				count++;
				break;
			}
	return count;
}

int main(int argc, char **argv)
{
	const char *mib = argc > 1 ? argv[1] : "768";
	const char *stride = argc > 2 ? argv[2] : "1";
	long limit = argc > 3 ? atol(argv[3]) : 300, t0, waited;
	int status = 0, workload_rc, swapoff_rc, rmmod_rc, problems;
	pid_t pid, w;

	setvbuf(stdout, NULL, _IONBF, 0);
	if (mlockall(MCL_CURRENT | MCL_FUTURE) != 0)
		printf("tmem-failtest: mlockall: %s\n", strerror(errno));
	pid = fork();
	if (pid == 0) {
		execl("/bin/tmem-workload", "tmem-workload", mib, "1", "0x746d656d", stride, (char *)NULL);
		_exit(127);
	}
	printf("TMEM-PHASE workload-start mib=%s\n", mib);
	t0 = now_s();
	for (;;) {
		w = waitpid(-1, &status, WNOHANG);
		if (w == pid)
			break;
		if (w <= 0) {
			if (now_s() - t0 >= limit) {
				kill(pid, SIGKILL);
				waitpid(pid, &status, 0);
				break;
			}
			usleep(200 * 1000);
		}
	}
	waited = now_s() - t0;
	workload_rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
	printf("TMEM-PHASE workload-done rc=%d waited=%ld\n", workload_rc, waited);
	read_stats();
	t0 = now_s();
	swapoff_rc = swapoff("/dev/kclient0") ? errno : 0;
	rmmod_rc = syscall(SYS_delete_module, "kclient", O_NONBLOCK) ? errno : 0;
	problems = count_problems();
	printf("TMEM-RESULT test=fail workload=%d waited=%ld swapoff=%d rmmod=%d teardown_seconds=%ld oops=%d %s\n",
	       workload_rc, waited, swapoff_rc, rmmod_rc, now_s() - t0, problems, stats);
	sync();
	reboot(RB_POWER_OFF);
	return 0;
}
