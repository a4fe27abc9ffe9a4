/* Spends fixed wall-clock shares of every 100 ms in three functions:
 * burn_sixty 60 %, burn_thirty 30 %, burn_ten 10 %. Each is reached from
 * main through four calls the compiler may neither inline nor turn into
 * jumps, so a profiler must unwind five frames to find main.
 * Built -O2 -fomit-frame-pointer: unwinding needs the CFI. */
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#define NOINLINE __attribute__((noinline))

static volatile uint64_t sink;

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* Arithmetic for about 20 us between clock reads, so samples in the
 * clock (vdso) are rare. */
/* Each function gets its own constant so the compiler cannot fold
 * identical bodies into one (identical code folding). */
#define BURN(until, k)                                                     \
    do {                                                                   \
        uint64_t x = sink;                                                 \
        while (now_ns() < (until)) {                                       \
            for (int i = 0; i < 20000; i++)                                \
                x = x * 6364136223846793005ull + (k);                      \
            sink = x;                                                      \
        }                                                                  \
        return x & 1;                                                      \
    } while (0)

NOINLINE uint64_t burn_sixty(uint64_t until) { BURN(until, 1442695040888963407ull); }
NOINLINE uint64_t burn_thirty(uint64_t until) { BURN(until, 1442695040888963409ull); }
NOINLINE uint64_t burn_ten(uint64_t until) { BURN(until, 1442695040888963411ull); }

/* Four links per chain; the result is used after each call so none is a
 * tail call. */
#define LINK(name, next, k)                                                \
    NOINLINE uint64_t name(uint64_t until) { return next(until) * (k) + 1; }

LINK(sixty_d, burn_sixty, 3)
LINK(sixty_c, sixty_d, 5)
LINK(sixty_b, sixty_c, 7)
LINK(sixty_a, sixty_b, 11)
LINK(thirty_d, burn_thirty, 13)
LINK(thirty_c, thirty_d, 17)
LINK(thirty_b, thirty_c, 19)
LINK(thirty_a, thirty_b, 23)
LINK(ten_d, burn_ten, 29)
LINK(ten_c, ten_d, 31)
LINK(ten_b, ten_c, 37)
LINK(ten_a, ten_b, 41)

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 10.0;
    uint64_t end = now_ns() + (uint64_t)(seconds * 1e9);
    uint64_t acc = 0;
    for (uint64_t t = now_ns(); t < end; t += 100000000u) {
        acc += sixty_a(t + 60000000u);
        acc += thirty_a(t + 90000000u);
        acc += ten_a(t + 100000000u);
    }
    sink = acc;
    return 0;
}
