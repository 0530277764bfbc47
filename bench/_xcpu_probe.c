/* The machine's state between two CPUs: the round-trip time of one cache
 * line handed back and forth between a thread on each (bench/xcpu.py).
 *
 * Why: every frame a vhost-user switch moves crosses cores several times
 * (avail entry, descriptor, buffer, used entry: written on one CPU, read on
 * the other). On the virtual machines this project benchmarks on, that
 * hand-over costs 60-100 ns or 1000 ns round trip from one minute to the next
 * (the hypervisor places the two vCPUs near or far apart), and the loopback
 * rate follows it. Measured beside each run, it names the state the run was
 * in without looking at the rate itself.
 *
 * Built on first use by bench/xcpu.py (cc -O2 -shared -pthread), called
 * through ctypes (which releases the GIL).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <time.h>

struct shared {
    volatile uint64_t turn __attribute__((aligned(128)));   /* the one line handed over */
    int cpu;
    long rounds;
    volatile int ready;     /* the responder: 1 pinned and waiting, -1 cannot be pinned */
};

static int pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static void *responder(void *arg)
{
    struct shared *s = arg;
    if (pin(s->cpu) != 0) {
        s->ready = -1;
        return 0;
    }
    s->ready = 1;
    for (long i = 0; i < s->rounds; i++) {
        while (s->turn != (uint64_t)(2 * i + 1))
            ;   /* no pause: it alone costs ~65 cycles on Zen, more than a near hand-over */
        s->turn = (uint64_t)(2 * i + 2);
    }
    return 0;
}

/* Nanoseconds per round trip over `rounds` hand-overs between cpu_a (the
 * caller's thread, pinned for the call) and cpu_b; -1 if a thread cannot be
 * pinned or created. The caller's affinity is restored. */
double xcpu_round_trip_ns(int cpu_a, int cpu_b, long rounds)
{
    static struct shared s;
    struct timespec t0, t1;
    cpu_set_t saved;
    pthread_t thread;
    double ns;

    if (rounds <= 0)
        return -1;
    if (pthread_getaffinity_np(pthread_self(), sizeof saved, &saved) != 0)
        return -1;
    if (pin(cpu_a) != 0)
        return -1;
    s.turn = 0;
    s.cpu = cpu_b;
    s.rounds = rounds;
    s.ready = 0;
    if (pthread_create(&thread, 0, responder, &s) != 0) {
        pthread_setaffinity_np(pthread_self(), sizeof saved, &saved);
        return -1;
    }
    while (s.ready == 0)
        ;
    if (s.ready < 0) {
        pthread_join(thread, 0);
        pthread_setaffinity_np(pthread_self(), sizeof saved, &saved);
        return -1;
    }
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < rounds; i++) {
        s.turn = (uint64_t)(2 * i + 1);
        while (s.turn != (uint64_t)(2 * i + 2))
            ;   /* no pause: it alone costs ~65 cycles on Zen, more than a near hand-over */
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    pthread_join(thread, 0);
    pthread_setaffinity_np(pthread_self(), sizeof saved, &saved);
    ns = (double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec);
    return ns / (double)rounds;
}
