/* racer: a second vCPU of a hostile guest.
 *
 * Maps guest memory (a memfd, by path such as /proc/PID/fd/N or as an
 * inherited fd) and rewrites bytes in it as fast as the CPU allows, so that
 * a value the switch reads twice can differ between the reads. Used by
 * tests/test_hostile_race.py and the ring fuzzer (tests/test_fuzz_rings.py);
 * built at test time by tests/harness/racer.py.
 *
 *   racer [-t MS] [-s SEED] TARGET SPEC...
 *
 * TARGET   fd:N (an inherited descriptor) or a path to open read-write.
 * SPEC     flip:OFF:HEXA:HEXB[:BIT]  bytes A or B at file offset OFF: on
 *                                    iteration i the value is B when bit BIT
 *                                    (default 0) of i is set, else A.
 *                                    Values of 1, 2, 4 or 8 bytes at an
 *                                    aligned offset are written with one
 *                                    store; others byte by byte (torn on
 *                                    purpose). At the end every flip is left
 *                                    at A.
 *          rand:OFF:LEN              each iteration, one random aligned
 *                                    1/2/4/8-byte store of a random value
 *                                    somewhere in [OFF, OFF+LEN).
 *          bits:OFF:LEN              each iteration, one random bit of
 *                                    [OFF, OFF+LEN) toggled twice (set for a
 *                                    moment, then back): near-valid values.
 *
 * Runs until -t milliseconds have passed (default 10000) or SIGTERM/SIGINT,
 * and prints "ready" once the memory is mapped and "iterations N" at the end,
 * both on stdout. Exit status 0, or 2 on a usage or mapping error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_SPECS 4096
#define MAX_VAL 64

enum kind { FLIP, RAND, BITS };

struct spec {
    enum kind kind;
    uint64_t off, len;          /* FLIP: len = value length */
    unsigned bit;
    uint8_t a[MAX_VAL], b[MAX_VAL];
};

static volatile sig_atomic_t stop;
static struct spec specs[MAX_SPECS];
static int nspecs;

static void on_signal(int sig) { (void)sig; stop = 1; }

static void die(const char *msg, const char *arg) {
    fprintf(stderr, "racer: %s%s%s\n", msg, arg ? ": " : "", arg ? arg : "");
    exit(2);
}

static int hexval(const char *s, uint8_t *out) {
    size_t n = strlen(s);
    if (n == 0 || n % 2 || n / 2 > MAX_VAL)
        return -1;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1)
            return -1;
        out[i] = (uint8_t)v;
    }
    return (int)(n / 2);
}

static void parse_spec(char *arg, uint64_t size) {
    struct spec *s;
    char *save = NULL, *kind, *f[4] = {0};
    int nf = 0, la, lb;
    if (nspecs == MAX_SPECS)
        die("too many specs", NULL);
    s = &specs[nspecs];
    kind = strtok_r(arg, ":", &save);
    while (nf < 4 && (f[nf] = strtok_r(NULL, ":", &save)) != NULL)
        nf++;
    if (!kind || nf < 2)
        die("bad spec", arg);
    s->off = strtoull(f[0], NULL, 0);
    if (strcmp(kind, "flip") == 0) {
        if (nf < 3)
            die("flip needs OFF:HEXA:HEXB", arg);
        la = hexval(f[1], s->a);
        lb = hexval(f[2], s->b);
        if (la < 0 || la != lb)
            die("flip values must be hex of the same length (1..64 bytes)", arg);
        s->kind = FLIP;
        s->len = (uint64_t)la;
        s->bit = nf > 3 ? (unsigned)strtoul(f[3], NULL, 0) : 0;
        if (s->bit > 62)
            die("BIT must be 0..62", arg);
    } else if (strcmp(kind, "rand") == 0 || strcmp(kind, "bits") == 0) {
        s->kind = kind[0] == 'r' ? RAND : BITS;
        s->len = strtoull(f[1], NULL, 0);
        if (s->len == 0)
            die("LEN must be > 0", arg);
    } else {
        die("unknown spec kind", kind);
    }
    if (s->off > size || s->len > size - s->off)
        die("spec outside the mapping", arg);
    nspecs++;
}

static inline uint64_t xorshift(uint64_t *x) {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static inline void put(uint8_t *p, const uint8_t *v, uint64_t len) {
    uintptr_t a = (uintptr_t)p;
    switch (len) {
    case 1: __atomic_store_n(p, v[0], __ATOMIC_RELAXED); return;
    case 2: if (!(a & 1)) { uint16_t x; memcpy(&x, v, 2); __atomic_store_n((uint16_t *)p, x, __ATOMIC_RELAXED); return; } break;
    case 4: if (!(a & 3)) { uint32_t x; memcpy(&x, v, 4); __atomic_store_n((uint32_t *)p, x, __ATOMIC_RELAXED); return; } break;
    case 8: if (!(a & 7)) { uint64_t x; memcpy(&x, v, 8); __atomic_store_n((uint64_t *)p, x, __ATOMIC_RELAXED); return; } break;
    }
    for (uint64_t i = 0; i < len; i++)
        ((volatile uint8_t *)p)[i] = v[i];
}

static inline void rand_store(uint8_t *base, struct spec *s, uint64_t *rng) {
    uint64_t r = xorshift(rng), v = xorshift(rng);
    unsigned w = 1u << (r & 3);                /* 1, 2, 4 or 8 bytes */
    uint64_t off;
    if (w > s->len)
        w = 1;
    off = s->off + ((r >> 2) % (s->len - w + 1));
    if (off & (w - 1))
        off &= ~(uint64_t)(w - 1);
    if (off < s->off) {                        /* aligning left the range: a byte */
        off = s->off + ((r >> 2) % s->len);
        w = 1;
    }
    uint8_t *p = base + off;
    switch (w) {
    case 1: __atomic_store_n(p, (uint8_t)v, __ATOMIC_RELAXED); break;
    case 2: __atomic_store_n((uint16_t *)p, (uint16_t)v, __ATOMIC_RELAXED); break;
    case 4: __atomic_store_n((uint32_t *)p, (uint32_t)v, __ATOMIC_RELAXED); break;
    default: __atomic_store_n((uint64_t *)p, v, __ATOMIC_RELAXED); break;
    }
}

static inline void bit_blink(uint8_t *base, struct spec *s, uint64_t *rng) {
    uint64_t r = xorshift(rng);
    uint8_t *p = base + s->off + (r >> 3) % s->len;
    uint8_t m = (uint8_t)(1u << (r & 7));
    __atomic_fetch_xor(p, m, __ATOMIC_RELAXED);
    for (int k = 0; k < 16; k++)
        __asm__ volatile("" ::: "memory");
    __atomic_fetch_xor(p, m, __ATOMIC_RELAXED);
}

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int main(int argc, char **argv) {
    uint64_t limit_ms = 10000, seed = 0x9e3779b97f4a7c15ull, iters = 0, deadline;
    const char *target;
    struct stat st;
    struct sigaction sa;
    uint8_t *base;
    int fd, opt;
    while ((opt = getopt(argc, argv, "t:s:")) != -1) {
        if (opt == 't')
            limit_ms = strtoull(optarg, NULL, 0);
        else if (opt == 's')
            seed = strtoull(optarg, NULL, 0) | 1;
        else
            die("usage: racer [-t MS] [-s SEED] TARGET SPEC...", NULL);
    }
    if (optind + 2 > argc)
        die("usage: racer [-t MS] [-s SEED] TARGET SPEC...", NULL);
    target = argv[optind++];
    if (strncmp(target, "fd:", 3) == 0)
        fd = atoi(target + 3);
    else if ((fd = open(target, O_RDWR | O_CLOEXEC)) < 0)
        die(strerror(errno), target);
    if (fstat(fd, &st) != 0 || st.st_size <= 0)
        die("cannot size the target", target);
    base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED)
        die(strerror(errno), "mmap");
    for (; optind < argc; optind++)
        parse_spec(argv[optind], (uint64_t)st.st_size);
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    printf("ready\n");
    fflush(stdout);
    deadline = now_ms() + limit_ms;
    while (!stop) {
        for (int k = 0; k < nspecs; k++) {
            struct spec *s = &specs[k];
            if (s->kind == FLIP)
                put(base + s->off, (iters >> s->bit) & 1 ? s->b : s->a, s->len);
            else if (s->kind == RAND)
                rand_store(base, s, &seed);
            else
                bit_blink(base, s, &seed);
        }
        iters++;
        if ((iters & 0xfff) == 0 && now_ms() >= deadline)
            break;
    }
    for (int k = 0; k < nspecs; k++)
        if (specs[k].kind == FLIP)
            put(base + specs[k].off, specs[k].a, specs[k].len);
    printf("iterations %llu\n", (unsigned long long)iters);
    fflush(stdout);
    return 0;
}
