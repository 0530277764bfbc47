/* Which instruction-set extensions this build was compiled for, and which of
 * them the CPU it runs on lacks.
 *
 * The list is the compiler's own: every ISA macro it defined for the -march
 * the build used (x86-64-v2 by default, the build machine's CPU with
 * VSWITCH_MARCH=native, see setup.py). A build that may execute an
 * instruction the CPU does not have would die of SIGILL somewhere in the hot
 * loop; the module checks this list at import instead (_datapath.pyx) and
 * refuses with the names of what is missing.
 *
 * The checking functions are compiled for the plain x86-64 baseline
 * whatever -march says, so that they themselves run on any x86-64 CPU. */
#ifndef VS_CPUCHECK_H
#define VS_CPUCHECK_H

#include <stddef.h>
#include <string.h>

#define VS_BASELINE __attribute__((noinline, target("arch=x86-64")))

/* The -march the build used, given by setup.py. */
#ifndef VS_BUILD_TARGET
#define VS_BUILD_TARGET "unknown"
#endif
static const char vs_build_target[] = VS_BUILD_TARGET;

struct vs_isa_feature {
    const char *name;   /* __builtin_cpu_supports' name, and what we print */
};

/* Only names GCC's __builtin_cpu_supports knows (GCC 12). cx16 and
 * lahf_lm, the rest of x86-64-v2, have no name there; every CPU since
 * 2009 (Nehalem) has them. */
static const struct vs_isa_feature vs_build_features[] = {
#ifdef __SSE3__
    {"sse3"},
#endif
#ifdef __SSSE3__
    {"ssse3"},
#endif
#ifdef __SSE4_1__
    {"sse4.1"},
#endif
#ifdef __SSE4_2__
    {"sse4.2"},
#endif
#ifdef __POPCNT__
    {"popcnt"},
#endif
#ifdef __SSE4A__
    {"sse4a"},
#endif
#ifdef __AVX__
    {"avx"},
#endif
#ifdef __AVX2__
    {"avx2"},
#endif
#ifdef __F16C__
    {"f16c"},
#endif
#ifdef __FMA__
    {"fma"},
#endif
#ifdef __BMI__
    {"bmi"},
#endif
#ifdef __BMI2__
    {"bmi2"},
#endif
#ifdef __LZCNT__
    {"lzcnt"},
#endif
#ifdef __MOVBE__
    {"movbe"},
#endif
#ifdef __ADX__
    {"adx"},
#endif
#ifdef __AES__
    {"aes"},
#endif
#ifdef __PCLMUL__
    {"pclmul"},
#endif
#ifdef __VPCLMULQDQ__
    {"vpclmulqdq"},
#endif
#ifdef __GFNI__
    {"gfni"},
#endif
#ifdef __VAES__
    {"vaes"},
#endif
#ifdef __SHA__
    {"sha"},
#endif
#ifdef __RDRND__
    {"rdrnd"},
#endif
#ifdef __RDSEED__
    {"rdseed"},
#endif
#ifdef __XSAVE__
    {"xsave"},
#endif
#ifdef __AVX512F__
    {"avx512f"},
#endif
#ifdef __AVX512CD__
    {"avx512cd"},
#endif
#ifdef __AVX512BW__
    {"avx512bw"},
#endif
#ifdef __AVX512DQ__
    {"avx512dq"},
#endif
#ifdef __AVX512VL__
    {"avx512vl"},
#endif
#ifdef __AVX512IFMA__
    {"avx512ifma"},
#endif
#ifdef __AVX512VBMI__
    {"avx512vbmi"},
#endif
#ifdef __AVX512VBMI2__
    {"avx512vbmi2"},
#endif
#ifdef __AVX512VNNI__
    {"avx512vnni"},
#endif
#ifdef __AVX512BITALG__
    {"avx512bitalg"},
#endif
#ifdef __AVX512VPOPCNTDQ__
    {"avx512vpopcntdq"},
#endif
#ifdef __AVX512BF16__
    {"avx512bf16"},
#endif
    {NULL},
};

/* __builtin_cpu_supports needs a literal: one switch arm per name. */
static VS_BASELINE int vs_cpu_has(const char *name) {
#define VS_HAS(n) if (strcmp(name, n) == 0) return __builtin_cpu_supports(n) != 0
    VS_HAS("sse3"); VS_HAS("ssse3"); VS_HAS("sse4.1"); VS_HAS("sse4.2");
    VS_HAS("popcnt"); VS_HAS("sse4a"); VS_HAS("avx"); VS_HAS("avx2");
    VS_HAS("f16c"); VS_HAS("fma"); VS_HAS("bmi"); VS_HAS("bmi2");
    VS_HAS("lzcnt"); VS_HAS("movbe"); VS_HAS("adx"); VS_HAS("aes");
    VS_HAS("pclmul"); VS_HAS("vpclmulqdq"); VS_HAS("gfni"); VS_HAS("vaes");
    VS_HAS("sha"); VS_HAS("rdrnd"); VS_HAS("rdseed"); VS_HAS("xsave");
    VS_HAS("avx512f"); VS_HAS("avx512cd"); VS_HAS("avx512bw");
    VS_HAS("avx512dq"); VS_HAS("avx512vl"); VS_HAS("avx512ifma");
    VS_HAS("avx512vbmi"); VS_HAS("avx512vbmi2"); VS_HAS("avx512vnni");
    VS_HAS("avx512bitalg"); VS_HAS("avx512vpopcntdq"); VS_HAS("avx512bf16");
#undef VS_HAS
    return 0;  /* a name we cannot check is a name we do not trust */
}

/* Is `name` one of the comma-separated names in `list`? */
static VS_BASELINE int vs_in_list(const char *list, const char *name) {
    size_t n = strlen(name);
    const char *p = list;
    while (p != NULL && *p != '\0') {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && strncmp(p, name, n) == 0)
            return 1;
        p = end ? end + 1 : NULL;
    }
    return 0;
}

/* The compiled-for features the CPU lacks, space-separated into out (always
 * NUL-terminated); returns how many. `pretend_absent`, a comma-separated list
 * or NULL, is the tests' way to see the refusal on a CPU that has them all. */
static VS_BASELINE int vs_cpu_missing(const char *pretend_absent, char *out, size_t size) {
    int missing = 0;
    size_t used = 0;
    if (size == 0)
        return -1;
    out[0] = '\0';
    __builtin_cpu_init();
    for (const struct vs_isa_feature *f = vs_build_features; f->name != NULL; f++) {
        int absent = !vs_cpu_has(f->name) ||
                     (pretend_absent != NULL && vs_in_list(pretend_absent, f->name));
        if (!absent)
            continue;
        missing++;
        size_t len = strlen(f->name);
        if (used + len + 2 <= size) {
            if (used > 0)
                out[used++] = ' ';
            /* a loop, not memcpy: with _FORTIFY_SOURCE (Debian's package
             * build flags) memcpy is an always_inline wrapper that cannot be
             * inlined into a function built for another target */
            for (size_t k = 0; k < len; k++)
                out[used + k] = f->name[k];
            used += len;
            out[used] = '\0';
        }
    }
    return missing;
}

/* The i-th compiled-for feature, or NULL past the end. */
static inline const char *vs_build_feature(size_t i) {
    return i < sizeof(vs_build_features) / sizeof(vs_build_features[0]) ? vs_build_features[i].name : NULL;
}

#endif
