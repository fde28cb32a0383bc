// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * tmem-nbd-client: a minimal NBD client for the swap benchmark (the NBD baseline). Written for
 * tmem from the NBD protocol description; static, no libc extras.
 *
 *   tmem-nbd-client HOST PORT DEVICE [EXPORT]
 *
 * Connects over TCP, does the fixed-newstyle handshake with NBD_OPT_EXPORT_NAME, hands the socket
 * to the kernel driver with the old ioctl interface (SET_BLKSIZE, SET_SIZE_BLOCKS, SET_FLAGS,
 * SET_SOCK) and forks a child that sits in NBD_DO_IT (which returns only when the device is
 * disconnected). The parent waits (bounded) until the device shows its size, prints one line
 *   TMEM-NBD status=ok size=BYTES flags=0xNN pid=CHILD
 * and exits 0.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* ioctl numbers of <linux/nbd.h>: _IO(0xab, n). */
#define NBD_SET_SOCK _IO(0xab, 0)
#define NBD_SET_BLKSIZE _IO(0xab, 1)
#define NBD_DO_IT _IO(0xab, 3)
#define NBD_CLEAR_SOCK _IO(0xab, 4)
#define NBD_SET_SIZE_BLOCKS _IO(0xab, 7)
#define NBD_SET_TIMEOUT _IO(0xab, 9)
#define NBD_SET_FLAGS _IO(0xab, 10)

#define NBD_FLAG_FIXED_NEWSTYLE 1u
#define NBD_FLAG_NO_ZEROES 2u
#define NBD_OPT_EXPORT_NAME 1u
#define BLOCK 4096u

static int fail(const char *what)
{
	perror(what);
	printf("TMEM-NBD status=fail step=%s\n", what);
	fflush(stdout);
	return 1;
}

/* Reads exactly n bytes (the socket has a receive timeout, so this is bounded). */
static int read_full(int fd, void *buf, size_t n)
{
	unsigned char *p = buf;

	while (n) {
		ssize_t r = read(fd, p, n);

		if (r <= 0)
			return -1;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

static int write_full(int fd, const void *buf, size_t n)
{
	const unsigned char *p = buf;

	while (n) {
		ssize_t r = write(fd, p, n);

		if (r <= 0)
			return -1;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

static uint64_t be64(const unsigned char *b)
{
	uint64_t v = 0;
	int i;

	for (i = 0; i < 8; i++)
		v = (v << 8) | b[i];
	return v;
}

static void put_be32(unsigned char *b, uint32_t v)
{
	b[0] = (unsigned char)(v >> 24);
	b[1] = (unsigned char)(v >> 16);
	b[2] = (unsigned char)(v >> 8);
	b[3] = (unsigned char)v;
}

int main(int argc, char **argv)
{
	const char *export_name = argc > 4 ? argv[4] : "";
	unsigned char hello[18], opt[16], reply[10], zeroes[124];
	uint32_t client_flags = 0;
	uint16_t hs_flags, tx_flags;
	struct sockaddr_in addr;
	struct timeval tv = { .tv_sec = 10 };
	char sysfs[128];
	uint64_t size;
	int sock, dev, one = 1, tries;
	pid_t child;

	if (argc < 4) {
		fprintf(stderr, "usage: %s HOST PORT DEVICE [EXPORT]\n", argv[0]);
		return 2;
	}
	memset(&addr, 0, sizeof(addr));
	addr.sin_family = AF_INET;
	addr.sin_port = htons((uint16_t)atoi(argv[2]));
	if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1)
		return fail("address");
	sock = socket(AF_INET, SOCK_STREAM, 0);
	if (sock < 0)
		return fail("socket");
	setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(sock, (struct sockaddr *)&addr, sizeof(addr)) < 0)
		return fail("connect");

	/* Server greeting: "NBDMAGIC" "IHAVEOPT" flags(16). */
	if (read_full(sock, hello, sizeof(hello)) < 0)
		return fail("greeting");
	if (memcmp(hello, "NBDMAGIC", 8) != 0 || memcmp(hello + 8, "IHAVEOPT", 8) != 0)
		return fail("not-newstyle");
	hs_flags = (uint16_t)(hello[16] << 8 | hello[17]);
	if (hs_flags & NBD_FLAG_FIXED_NEWSTYLE)
		client_flags |= NBD_FLAG_FIXED_NEWSTYLE;
	if (hs_flags & NBD_FLAG_NO_ZEROES)
		client_flags |= NBD_FLAG_NO_ZEROES;
	put_be32(opt, client_flags);
	if (write_full(sock, opt, 4) < 0)
		return fail("client-flags");

	/* NBD_OPT_EXPORT_NAME: "IHAVEOPT" option(32) length(32) name. */
	memcpy(opt, "IHAVEOPT", 8);
	put_be32(opt + 8, NBD_OPT_EXPORT_NAME);
	put_be32(opt + 12, (uint32_t)strlen(export_name));
	if (write_full(sock, opt, 16) < 0 || write_full(sock, export_name, strlen(export_name)) < 0)
		return fail("export-name");
	/* Reply: size(64) transmission flags(16) [124 zero bytes unless NO_ZEROES]. */
	if (read_full(sock, reply, sizeof(reply)) < 0)
		return fail("export-reply");
	size = be64(reply);
	tx_flags = (uint16_t)(reply[8] << 8 | reply[9]);
	if (!(client_flags & NBD_FLAG_NO_ZEROES) && read_full(sock, zeroes, sizeof(zeroes)) < 0)
		return fail("zeroes");
	if (size < BLOCK)
		return fail("size");

	/* The kernel takes over the socket: no user-space timeouts on it from now on. */
	tv.tv_sec = 0;
	setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	dev = open(argv[3], O_RDWR);
	if (dev < 0)
		return fail("open-device");
	ioctl(dev, NBD_CLEAR_SOCK);
	if (ioctl(dev, NBD_SET_BLKSIZE, (unsigned long)BLOCK) < 0)
		return fail("set-blksize");
	if (ioctl(dev, NBD_SET_SIZE_BLOCKS, (unsigned long)(size / BLOCK)) < 0)
		return fail("set-size");
	if (ioctl(dev, NBD_SET_TIMEOUT, 60UL) < 0)
		return fail("set-timeout");
	if (ioctl(dev, NBD_SET_FLAGS, (unsigned long)tx_flags) < 0)
		return fail("set-flags");
	if (ioctl(dev, NBD_SET_SOCK, (unsigned long)sock) < 0)
		return fail("set-sock");

	child = fork();
	if (child < 0)
		return fail("fork");
	if (child == 0) {
		/* Serves the device until disconnect; never swapped out itself. */
		mlockall(MCL_CURRENT | MCL_FUTURE);
		ioctl(dev, NBD_DO_IT);
		ioctl(dev, NBD_CLEAR_SOCK);
		_exit(0);
	}
	close(sock);
	/* The device is usable once the driver publishes its size (bounded wait: 10 s). */
	snprintf(sysfs, sizeof(sysfs), "/sys/block/%s/size", strrchr(argv[3], '/') ? strrchr(argv[3], '/') + 1 : argv[3]);
	for (tries = 0; tries < 100; tries++) {
		FILE *f = fopen(sysfs, "r");
		unsigned long long sectors = 0;

		if (f) {
			if (fscanf(f, "%llu", &sectors) != 1)
				sectors = 0;
			fclose(f);
		}
		if (sectors * 512 == size / BLOCK * BLOCK)
			break;
		usleep(100000);
	}
	if (tries == 100)
		return fail("device-size");
	printf("TMEM-NBD status=ok size=%llu flags=0x%x pid=%d\n", (unsigned long long)size,
	       tx_flags, (int)child);
	fflush(stdout);
	return 0;
}
