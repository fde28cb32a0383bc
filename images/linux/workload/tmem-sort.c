// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * tmem-sort: a "real program" workload for the swap benchmark. Generates MIB of 64-byte records
 * (a pseudo-random 64-bit key + 56 bytes of payload derived from the key), sorts them in place by
 * key with a quicksort (median of three, smaller side first, insertion sort for short runs), then
 * verifies: keys ascending, every payload still matches its key, and the XOR/sum of all keys is
 * unchanged. Built static into the client initramfs.
 *
 *   tmem-sort MIB [SEED]
 *
 * Prints: TMEM-SORT status=ok|fail mib=N records=N gen_ms=N sort_ms=N verify_ms=N bad=N
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

struct rec {
	uint64_t key;
	uint64_t payload[7];
};

static uint64_t mix(uint64_t z)
{
	z += 0x9e3779b97f4a7c15ULL;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static void make(struct rec *r, uint64_t key)
{
	int i;

	r->key = key;
	for (i = 0; i < 7; i++)
		/* Half the payload words are small (compressible), half are hashes. */
		r->payload[i] = (i & 1) ? mix(key + (uint64_t)i) : (key >> 40) + (uint64_t)i;
}

static int check(const struct rec *r)
{
	int i;

	for (i = 0; i < 7; i++)
		if (r->payload[i] != ((i & 1) ? mix(r->key + (uint64_t)i) : (r->key >> 40) + (uint64_t)i))
			return 0;
	return 1;
}

static void swap(struct rec *a, struct rec *b)
{
	struct rec t = *a;

	*a = *b;
	*b = t;
}

static void insertion(struct rec *a, size_t n)
{
	size_t i, j;

	for (i = 1; i < n; i++) {
		struct rec t = a[i];

		for (j = i; j > 0 && a[j - 1].key > t.key; j--)
			a[j] = a[j - 1];
		a[j] = t;
	}
}

static void quicksort(struct rec *a, size_t n)
{
	while (n > 16) {
		size_t mid = n / 2, i = 0, j = n - 1;
		uint64_t pivot;

		if (a[mid].key < a[0].key)
			swap(&a[mid], &a[0]);
		if (a[n - 1].key < a[0].key)
			swap(&a[n - 1], &a[0]);
		if (a[n - 1].key < a[mid].key)
			swap(&a[n - 1], &a[mid]);
		pivot = a[mid].key;
		/* Hoare partition. */
		for (;;) {
			while (a[i].key < pivot)
				i++;
			while (a[j].key > pivot)
				j--;
			if (i >= j)
				break;
			swap(&a[i], &a[j]);
			i++;
			j--;
		}
		/* [0, j] and [j + 1, n): recurse into the smaller, loop on the larger. */
		if (j + 1 < n - j - 1) {
			quicksort(a, j + 1);
			a += j + 1;
			n -= j + 1;
		} else {
			quicksort(a + j + 1, n - j - 1);
			n = j + 1;
		}
	}
	insertion(a, n);
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
	uint64_t seed = argc > 2 ? strtoull(argv[2], NULL, 0) : 0x736f7274;
	size_t n = (size_t)(mib * 1024 * 1024 / sizeof(struct rec)), i, bad = 0;
	uint64_t xor_before = 0, sum_before = 0, xor_after = 0, sum_after = 0;
	long gen_ms, sort_ms, verify_ms;
	struct timespec t0;
	struct rec *a;

	a = mmap(NULL, n * sizeof(*a), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (a == MAP_FAILED || n < 2) {
		printf("TMEM-SORT status=fail reason=mmap mib=%llu\n", (unsigned long long)mib);
		return 2;
	}
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (i = 0; i < n; i++) {
		uint64_t key = mix(seed ^ (uint64_t)i);

		make(&a[i], key);
		xor_before ^= key;
		sum_before += key;
	}
	gen_ms = ms_since(&t0);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	quicksort(a, n);
	sort_ms = ms_since(&t0);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (i = 0; i < n; i++) {
		if ((i && a[i - 1].key > a[i].key) || !check(&a[i]))
			bad++;
		xor_after ^= a[i].key;
		sum_after += a[i].key;
	}
	if (xor_after != xor_before || sum_after != sum_before)
		bad++;
	verify_ms = ms_since(&t0);
	printf("TMEM-SORT status=%s mib=%llu records=%llu gen_ms=%ld sort_ms=%ld verify_ms=%ld bad=%llu\n",
	       bad ? "fail" : "ok", (unsigned long long)mib, (unsigned long long)n, gen_ms, sort_ms,
	       verify_ms, (unsigned long long)bad);
	fflush(stdout);
	return bad ? 1 : 0;
}
