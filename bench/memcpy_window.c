/* How fast memcpy is for each distance between the destination's and the
 * source's place within a page (BENCHMARKS.md, "One copy fewer").
 *
 *   gcc -O2 -o memcpy_window bench/memcpy_window.c
 *   ./memcpy_window 16384
 *   GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=2147483647 ./memcpy_window 16384
 *
 * Copies SIZE bytes from a page-aligned source to a destination OFFSET
 * bytes past a page boundary, 64 MiB in all for each OFFSET from 0 to
 * 4095, and prints the offsets that ran below 20 GB/s with their speed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    size_t size = argc > 1 ? strtoul(argv[1], NULL, 10) : 16384;
    char *src = aligned_alloc(4096, size + 8192);
    char *dst = aligned_alloc(4096, size + 8192);
    if (!src || !dst || size == 0) {
        fprintf(stderr, "usage: memcpy_window SIZE\n");
        return 2;
    }
    memset(src, 1, size + 8192);
    memset(dst, 2, size + 8192);
    size_t total = 64ul << 20, rounds = total / size;
    int slow = 0;
    double slowest = 1e9, fastest = 0;
    for (int offset = 0; offset < 4096; offset++) {
        double start = seconds();
        for (size_t i = 0; i < rounds; i++) {
            memcpy(dst + offset, src, size);
            __asm__ volatile("" ::"r"(dst) : "memory");
        }
        double gbs = rounds * size / (seconds() - start) / 1e9;
        if (gbs < slowest) slowest = gbs;
        if (gbs > fastest) fastest = gbs;
        if (gbs < 20) {
            slow++;
            printf("offset %4d: %5.1f GB/s\n", offset, gbs);
        }
    }
    printf("%zu bytes: %d of 4096 offsets below 20 GB/s; %.1f to %.1f GB/s\n", size, slow,
           slowest, fastest);
    return 0;
}
