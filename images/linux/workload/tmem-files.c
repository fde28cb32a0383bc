// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * tmem-files: files with deterministic contents, written and verified through a filesystem, for
 * the cache device's tests (images/linux/initramfs/test-cache.sh). Built static into the client
 * initramfs.
 *
 *   tmem-files write|verify DIR FIRST COUNT MIB SEED
 *
 * Files DIR/fFIRST .. DIR/f(FIRST+COUNT-1), MIB MiB each; every 4 KiB block is derived from
 * (SEED, file, block): half compressible text, half random. `verify` reads them back and compares
 * every byte. Prints one machine-readable line:
 *   TMEM-FILES op=write|verify status=ok|fail files=N mib=N bad_blocks=N first_bad=F:B ms=N
 * and exits 0 only if every block was written (or verified).
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BLOCK 4096
#define CHUNK (64 * BLOCK)

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static void fill_block(unsigned char *b, uint64_t seed, uint64_t file, uint64_t block)
{
	uint64_t s = seed ^ (file * 0x100000001b3ULL) ^ (block << 20);
	size_t i;

	if (splitmix(&s) & 1) {
		/* text-like: a small alphabet, compresses well */
		for (i = 0; i < BLOCK; i += 8) {
			uint64_t r = splitmix(&s);
			int j;
			for (j = 0; j < 8; j++)
				b[i + j] = "etaoin shrdlu\n"[((r >> (j * 8)) & 0xff) % 14];
		}
	} else {
		for (i = 0; i < BLOCK; i += 8) {
			uint64_t r = splitmix(&s);
			memcpy(b + i, &r, 8);
		}
	}
}

static long long now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

int main(int argc, char **argv)
{
	static unsigned char buf[CHUNK], want[BLOCK];
	const char *op, *dir;
	unsigned long first, count, mib, f;
	uint64_t seed, bad = 0, blocks_per_file;
	long long first_bad_file = -1, first_bad_block = -1, t0;
	int writing, failed = 0;

	if (argc != 7) {
		fprintf(stderr, "usage: tmem-files write|verify DIR FIRST COUNT MIB SEED\n");
		return 2;
	}
	op = argv[1];
	dir = argv[2];
	first = strtoul(argv[3], NULL, 0);
	count = strtoul(argv[4], NULL, 0);
	mib = strtoul(argv[5], NULL, 0);
	seed = strtoull(argv[6], NULL, 0);
	writing = strcmp(op, "write") == 0;
	if (!writing && strcmp(op, "verify") != 0) {
		fprintf(stderr, "tmem-files: unknown operation %s\n", op);
		return 2;
	}
	blocks_per_file = (uint64_t)mib * 1024 * 1024 / BLOCK;
	t0 = now_ms();
	for (f = first; f < first + count; f++) {
		char path[512];
		uint64_t blk = 0;
		int fd;

		snprintf(path, sizeof(path), "%s/f%lu", dir, f);
		fd = writing ? open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644) : open(path, O_RDONLY);
		if (fd < 0) {
			perror(path);
			failed = 1;
			continue;
		}
		while (blk < blocks_per_file) {
			uint64_t n = blocks_per_file - blk, i;
			size_t len;

			if (n > CHUNK / BLOCK)
				n = CHUNK / BLOCK;
			len = n * BLOCK;
			if (writing) {
				for (i = 0; i < n; i++)
					fill_block(buf + i * BLOCK, seed, f, blk + i);
				if (write(fd, buf, len) != (ssize_t)len) {
					perror(path);
					failed = 1;
					break;
				}
			} else {
				size_t got = 0;
				while (got < len) {
					ssize_t r = read(fd, buf + got, len - got);
					if (r <= 0)
						break;
					got += (size_t)r;
				}
				if (got != len) {
					fprintf(stderr, "%s: short read at block %llu\n", path,
						(unsigned long long)blk);
					failed = 1;
					break;
				}
				for (i = 0; i < n; i++) {
					fill_block(want, seed, f, blk + i);
					if (memcmp(want, buf + i * BLOCK, BLOCK) != 0) {
						if (bad++ == 0) {
							first_bad_file = (long long)f;
							first_bad_block = (long long)(blk + i);
						}
					}
				}
			}
			blk += n;
		}
		if (close(fd) != 0)
			failed = 1;
	}
	printf("TMEM-FILES op=%s status=%s files=%lu mib=%lu bad_blocks=%llu first_bad=%lld:%lld ms=%lld\n",
	       op, (failed || bad) ? "fail" : "ok", count, count * mib, (unsigned long long)bad,
	       first_bad_file, first_bad_block, now_ms() - t0);
	return (failed || bad) ? 1 : 0;
}
