// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * tmem-workload: allocate more memory than the VM has, fill it with deterministic pages of mixed
 * compressibility, read everything back and verify it. Built static into the client initramfs.
 *
 *   tmem-workload MIB [PASSES] [SEED] [STRIDE]
 *
 * Verification reads pages in the order (i * STRIDE) mod pages: STRIDE 1 (default) is sequential
 * (swap readahead helps), a large prime such as 7919 makes every swap-in a random read.
 *
 * Page kinds (by page number): zero, same-filled word, text-like (compressible), half random,
 * random (incompressible). Prints one machine-readable line:
 *   TMEM-WORKLOAD status=ok|fail mib=N pages=N passes=N bad_pages=N first_bad=N fill_ms=N verify_ms=N
 * and exits 0 only if every page verified.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define PAGE 4096

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static void fill_page(uint64_t *p, uint64_t index, uint64_t seed, uint64_t pass)
{
	uint64_t s = seed ^ (index * 0x100000001b3ULL) ^ (pass << 56);
	unsigned kind = (unsigned)(splitmix(&s) % 8);
	size_t i;

	switch (kind) {
	case 0: /* zero page */
		memset(p, 0, PAGE);
		break;
	case 1: { /* same-filled */
		uint64_t w = splitmix(&s);
		for (i = 0; i < PAGE / 8; i++)
			p[i] = w;
		break;
	}
	case 2: case 3: case 4: { /* text-like: small alphabet, compresses well */
		unsigned char *b = (unsigned char *)p;
		static const char words[] = "the quick brown fox jumps over the lazy dog tmem ramster swap ";
		uint64_t r = splitmix(&s);
		for (i = 0; i < PAGE; i++) {
			if ((i & 15) == 0)
				r = splitmix(&s);
			b[i] = (unsigned char)words[(r >> ((i & 15) * 4)) % (sizeof(words) - 1) % 23 + (i % 7)];
		}
		break;
	}
	case 5: case 6: /* half random */
		for (i = 0; i < PAGE / 8; i++)
			p[i] = i < PAGE / 16 ? splitmix(&s) : index;
		break;
	default: /* random */
		for (i = 0; i < PAGE / 8; i++)
			p[i] = splitmix(&s);
		break;
	}
	/* Always stamp the page so misplaced pages are detected. */
	p[PAGE / 8 - 1] = index ^ seed ^ pass;
}

static long ms_since(struct timespec *t0)
{
	struct timespec t1;

	clock_gettime(CLOCK_MONOTONIC, &t1);
	return (t1.tv_sec - t0->tv_sec) * 1000 + (t1.tv_nsec - t0->tv_nsec) / 1000000;
}

int main(int argc, char **argv)
{
	uint64_t mib = argc > 1 ? strtoull(argv[1], NULL, 0) : 64;
	uint64_t passes = argc > 2 ? strtoull(argv[2], NULL, 0) : 1;
	uint64_t seed = argc > 3 ? strtoull(argv[3], NULL, 0) : 0x746d656d;
	uint64_t stride = argc > 4 ? strtoull(argv[4], NULL, 0) : 1;
	uint64_t pages = mib * 1024 * 1024 / PAGE, bad = 0, first_bad = UINT64_MAX, pass, i;
	static uint64_t expect[PAGE / 8];
	long fill_ms = 0, verify_ms = 0;
	struct timespec t0;
	unsigned char *mem;

	mem = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (stride == 0 || (stride > 1 && pages % stride == 0)) {
		printf("TMEM-WORKLOAD status=fail reason=stride mib=%llu\n", (unsigned long long)mib);
		return 2;
	}
	if (mem == MAP_FAILED) {
		perror("mmap");
		printf("TMEM-WORKLOAD status=fail reason=mmap mib=%llu\n", (unsigned long long)mib);
		return 2;
	}
	for (pass = 0; pass < passes; pass++) {
		clock_gettime(CLOCK_MONOTONIC, &t0);
		for (i = 0; i < pages; i++) {
			fill_page((uint64_t *)(mem + i * PAGE), i, seed, pass);
			if ((i & 0x3fff) == 0 && i)
				fprintf(stderr, "tmem-workload: pass %llu filled %llu MiB\n",
					(unsigned long long)pass, (unsigned long long)(i * PAGE >> 20));
		}
		fill_ms += ms_since(&t0);
		/* Tests wait for this line to disturb the reads (kclient_replicas.rs). */
		fprintf(stderr, "tmem-workload: pass %llu verifying\n", (unsigned long long)pass);
		clock_gettime(CLOCK_MONOTONIC, &t0);
		for (i = 0; i < pages; i++) {
			uint64_t idx = (i * stride) % pages;

			fill_page(expect, idx, seed, pass);
			if (memcmp(expect, mem + idx * PAGE, PAGE) != 0) {
				bad++;
				if (idx < first_bad)
					first_bad = idx;
			}
		}
		verify_ms += ms_since(&t0);
	}
	printf("TMEM-WORKLOAD status=%s mib=%llu pages=%llu passes=%llu stride=%llu bad_pages=%llu first_bad=%lld fill_ms=%ld verify_ms=%ld\n",
	       bad ? "fail" : "ok", (unsigned long long)mib, (unsigned long long)pages,
	       (unsigned long long)stride,
	       (unsigned long long)passes, (unsigned long long)bad,
	       first_bad == UINT64_MAX ? -1LL : (long long)first_bad, fill_ms, verify_ms);
	fflush(stdout);
	return bad ? 1 : 0;
}
