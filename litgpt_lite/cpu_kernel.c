/* bf16 matmul with few rows for x86-64 CPUs with AVX2 and FMA but no native bf16 (built and loaded by
 * cpu_kernel.py).
 *
 * y (m, n) = x (m, k) @ w (n, k)^T (+ bias), as torch.nn.functional.linear computes it: the weights and the result
 * are bf16, and the products are summed in float32. A bf16 -> float32 conversion is a 16-bit shift, and it is what
 * bounds torch's bf16 kernels on such CPUs: the matrix-vector one converts each weight once per row of x, so m rows
 * cost about m matrix-vector products. Here every 16-weight piece is converted once and used for up to 8 rows of x
 * while it is in registers, so a short prompt costs about one pass over the weights.
 *
 * The threads come from torch's own OpenMP runtime (the loader links against the one torch loaded), so no second
 * thread pool competes for the cores, and the caller passes torch's thread count.
 */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#define ROWS 8 /* rows of x per pass over a weight row: 16 float32 accumulators */

static inline __m256 bf16_lo(__m256i h) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(h)), 16));
}

static inline __m256 bf16_hi(__m256i h) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(h, 1)), 16));
}

static inline float bf16_to_float(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_hadd_ps(s, s);
    s = _mm_hadd_ps(s, s);
    return _mm_cvtss_f32(s);
}

/* round to nearest even, NaN to torch's quiet NaN: c10::BFloat16's rounding */
static inline uint16_t float_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* x: float32 (m, k) contiguous; w: bf16 (n, k) contiguous; bias: bf16 (n) or NULL; y: bf16 (m, n) contiguous;
 * threads: torch.get_num_threads() of the calling thread */
void bf16_linear(const float *x, const uint16_t *w, const uint16_t *bias, uint16_t *y, long m, long n, long k,
                 int threads) {
    const long k16 = k - k % 16;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long r = 0; r < n; r++) {
        const uint16_t *wr = w + r * k;
        const float b = bias ? bf16_to_float(bias[r]) : 0.0f;
        for (long j0 = 0; j0 < m; j0 += ROWS) {
            const long rows = m - j0 < ROWS ? m - j0 : ROWS;
            const float *xj = x + j0 * k;
            __m256 acc[ROWS];
            for (long j = 0; j < rows; j++) acc[j] = _mm256_setzero_ps();
            for (long i = 0; i < k16; i += 16) {
                const __m256i h = _mm256_loadu_si256((const __m256i *)(wr + i));
                const __m256 w0 = bf16_lo(h), w1 = bf16_hi(h);
                for (long j = 0; j < rows; j++) {
                    acc[j] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xj + j * k + i), acc[j]);
                    acc[j] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xj + j * k + i + 8), acc[j]);
                }
            }
            for (long j = 0; j < rows; j++) {
                float s = hsum(acc[j]);
                for (long i = k16; i < k; i++) s += bf16_to_float(wr[i]) * xj[j * k + i];
                y[(j0 + j) * n + r] = float_to_bf16(s + b);
            }
        }
    }
}
