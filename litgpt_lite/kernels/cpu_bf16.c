/* bf16 inference kernels for x86-64 CPUs with AVX2 and FMA but no native bf16 (built and loaded by cpu_bf16.py):
 * a matmul with few rows, RMSNorm, RoPE, and one query's attention over a KV cache. All compute in float32 and round
 * to bf16 where torch does (the attention only its output).
 *
 * The matmul: y (m, n) = x (m, k) @ w (n, k)^T (+ bias), as torch.nn.functional.linear computes it: the weights and
 * the result are bf16, and the products are summed in float32. A bf16 -> float32 conversion is a 16-bit shift, and it
 * is what bounds torch's bf16 kernels on such CPUs: the matrix-vector one converts each weight once per row of x, so
 * m rows cost about m matrix-vector products. Here every 16-weight piece is converted once and used for up to 8 rows
 * of x while it is in registers, so a short prompt costs about one pass over the weights.
 *
 * The threads come from torch's own OpenMP runtime (the loader links against the one torch loaded), so no second
 * thread pool competes for the cores, and the caller passes torch's thread count.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ROWS 8 /* rows of x per pass over a weight row: 16 float32 accumulators */
/* weights to request ahead of use: 4 KB, about two rows, which the hardware prefetcher alone does not fetch in
 * time: 16.3 -> 15.3 ms for the matmuls of a SmolLM2-135M decode step on 2 cores */
#define PREFETCH 2048

/* eight bf16 values to float32: a 16-bit shift each */
static inline __m256 bf16x8(__m128i h) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); }

static inline __m256 bf16_lo(__m256i h) { return bf16x8(_mm256_castsi256_si128(h)); }

static inline __m256 bf16_hi(__m256i h) { return bf16x8(_mm256_extracti128_si256(h, 1)); }

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

/* x: bf16 (m, k) contiguous; w: bf16 (n, k) contiguous; bias: bf16 (n) or NULL; y: bf16 (m, n) contiguous;
 * threads: torch.get_num_threads() of the calling thread. Returns 0, or -1 when out of memory. */
int bf16_linear(const uint16_t *x, const uint16_t *w, const uint16_t *bias, uint16_t *y, long m, long n, long k,
                int threads) {
    const long k16 = k - k % 16;
    if (m <= 0) return 0;
    float *xf = malloc((size_t)(m * k) * sizeof(float)); /* x in float32, converted once */
    if (!xf) return -1;
    for (long i = 0; i < m * k; i++) xf[i] = bf16_to_float(x[i]);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long r = 0; r < n; r++) {
        const uint16_t *wr = w + r * k;
        const float b = bias ? bf16_to_float(bias[r]) : 0.0f;
        for (long j0 = 0; j0 < m; j0 += ROWS) {
            const long rows = m - j0 < ROWS ? m - j0 : ROWS;
            const float *xj = xf + j0 * k;
            __m256 acc[ROWS];
            for (long j = 0; j < rows; j++) acc[j] = _mm256_setzero_ps();
            for (long i = 0; i < k16; i += 16) {
                _mm_prefetch((const char *)(wr + i + PREFETCH), _MM_HINT_T0); /* a hint: never faults */
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
    free(xf);
    return 0;
}

/* RMSNorm of bf16 rows, computed as model.RMSNorm (and transformers) compute it: in float32, x * rsqrt(mean(x^2) +
 * eps), then either rounded to bf16 and multiplied by the bf16 weight (Llama), or multiplied by (1 + weight) in
 * float32 and rounded once (Gemma, unit_offset). One call replaces the eight small torch ops of a decode step's norm.
 * x, w, y: bf16, x and y (rows, n) contiguous. */
void bf16_rms_norm(const uint16_t *x, const uint16_t *w, uint16_t *y, long rows, long n, float eps, int unit_offset,
                   int threads) {
    const long n16 = n - n % 16;
#pragma omp parallel for schedule(static) num_threads(threads) if (rows * n >= 65536)
    for (long r = 0; r < rows; r++) {
        const uint16_t *xr = x + r * n;
        __m256 acc = _mm256_setzero_ps();
        for (long i = 0; i < n16; i += 16) {
            const __m256i h = _mm256_loadu_si256((const __m256i *)(xr + i));
            const __m256 a = bf16_lo(h), b = bf16_hi(h);
            acc = _mm256_fmadd_ps(a, a, acc);
            acc = _mm256_fmadd_ps(b, b, acc);
        }
        float sum = hsum(acc);
        for (long i = n16; i < n; i++) sum += bf16_to_float(xr[i]) * bf16_to_float(xr[i]);
        const float scale = 1.0f / sqrtf(sum / (float)n + eps);
        for (long i = 0; i < n; i++) {
            const float normed = bf16_to_float(xr[i]) * scale;
            const float weight = bf16_to_float(w[i]);
            y[r * n + i] = unit_offset ? float_to_bf16(normed * (1.0f + weight))
                                       : float_to_bf16(weight * bf16_to_float(float_to_bf16(normed)));
        }
    }
}

/* Attention of one new token per row over its whole cache (no mask: a decode step that sees every cached key), for
 * bf16 tensors, in float32: scores q.k * scale, softmax, the weighted sum of values, rounded to bf16 once. Query head
 * h reads key/value head h / (H / G). One call replaces SDPA's per-call setup, which dominates at a decode step's
 * sizes. Strides are in elements; the last dimension (D) of q, k and v is contiguous; y is (B, H, D) contiguous. */
int bf16_attend_one(const uint16_t *q, const uint16_t *k, const uint16_t *v, uint16_t *y, long B, long H, long G,
                    long S, long D, long q_sb, long q_sh, long k_sb, long k_sg, long k_ss, long v_sb, long v_sg,
                    long v_ss, float scale, int threads) {
    float *work = malloc((size_t)(B * H) * (size_t)(S + 2 * D) * sizeof(float));
    if (!work) return -1;
    const long group = H / G, D8 = D - D % 8;
#pragma omp parallel for schedule(static) num_threads(threads) if (B * H * S * D >= 262144)
    for (long bh = 0; bh < B * H; bh++) {
        const long b = bh / H, h = bh % H, g = h / group;
        float *p = work + bh * (S + 2 * D), *qf = p + S, *out = qf + D;
        for (long d = 0; d < D; d++) {
            qf[d] = bf16_to_float(q[b * q_sb + h * q_sh + d]);
            out[d] = 0.0f;
        }
        float max = -INFINITY;
        for (long s = 0; s < S; s++) {
            const uint16_t *ks = k + b * k_sb + g * k_sg + s * k_ss;
            __m256 acc = _mm256_setzero_ps();
            for (long d = 0; d < D8; d += 8) {
                const __m256 kv = bf16x8(_mm_loadu_si128((const __m128i *)(ks + d)));
                acc = _mm256_fmadd_ps(kv, _mm256_loadu_ps(qf + d), acc);
            }
            float dot = hsum(acc);
            for (long d = D8; d < D; d++) dot += bf16_to_float(ks[d]) * qf[d];
            p[s] = dot * scale;
            if (p[s] > max) max = p[s];
        }
        float total = 0.0f;
        for (long s = 0; s < S; s++) {
            p[s] = expf(p[s] - max);
            total += p[s];
        }
        for (long s = 0; s < S; s++) {
            const uint16_t *vs = v + b * v_sb + g * v_sg + s * v_ss;
            const float w = p[s];
            for (long d = 0; d < D; d++) out[d] += w * bf16_to_float(vs[d]);
        }
        for (long d = 0; d < D; d++) y[bh * D + d] = float_to_bf16(out[d] / total);
    }
    free(work);
    return 0;
}

/* RoPE in the half-split layout, as model.apply_rope computes it in bf16: out = x * cos + roll(x, n / 2) * sin (the
 * sin's first half carries the sign), each product and the sum rounded to bf16 as torch's bf16 ops round them, so the
 * result is bit for bit torch's. Dimensions from n on pass through (partial rotary). x: (B, T, heads, D) with
 * strides x_sb, x_st, x_sh and a contiguous last dimension; cos, sin: (B, T, n) with strides cs_sb, cs_st (0 to
 * broadcast) and a contiguous last dimension; y: (B, T, heads, D) contiguous. */
void bf16_rope(const uint16_t *x, const uint16_t *cos, const uint16_t *sin, uint16_t *y, long B, long T, long heads,
               long D, long n, long x_sb, long x_st, long x_sh, long cs_sb, long cs_st) {
    const long half = n / 2;
    for (long b = 0; b < B; b++)
        for (long t = 0; t < T; t++) {
            const uint16_t *c = cos + b * cs_sb + t * cs_st, *s = sin + b * cs_sb + t * cs_st;
            for (long h = 0; h < heads; h++) {
                const uint16_t *xh = x + b * x_sb + t * x_st + h * x_sh;
                uint16_t *yh = y + ((b * T + t) * heads + h) * D;
                for (long i = 0; i < n; i++) {
                    const float rolled = bf16_to_float(xh[i < half ? i + half : i - half]);
                    const uint16_t a = float_to_bf16(bf16_to_float(xh[i]) * bf16_to_float(c[i]));
                    const uint16_t r = float_to_bf16(rolled * bf16_to_float(s[i]));
                    yh[i] = float_to_bf16(bf16_to_float(a) + bf16_to_float(r));
                }
                for (long i = n; i < D; i++) yh[i] = xh[i];
            }
        }
}
