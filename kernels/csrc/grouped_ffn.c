/* The grouped MoE path's compiled kernel: every routed expert's SwiGLU FFN in one call.
 *
 * `kernels/native.py` builds this on first use with the machine's C compiler, against
 * PyTorch's own libtorch_cpu (MKL's CBLAS) and libgomp (so its threads are PyTorch's),
 * and checks it against PyTorch before the MoE layer's `auto` may weigh it.
 *
 * Why not PyTorch ops per expert (the "grouped:mkl" path): on an Intel Xeon (model 106,
 * 2026-12-02) the same MKL GEMMs ran 1.5x slower through `torch.ops.mkl._mkl_linear`
 * (eight [128,512]x[512,2048] calls: 15 ms against 9.7 ms here), most of it a fresh 1 MB
 * output per call, and SiLU(gate) * up as two ATen ops took ~1 ms at 512 tokens where
 * one pass here takes ~0.3 ms. Here each piece's gate/up output stays in a per-thread
 * scratch buffer that is in cache for the SiLU pass and the down projection.
 */
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* MKL's CBLAS as libtorch_cpu exports it (LP64: int indices; `native.py` checks the
 * answers before use, so a library with other conventions is left out, not trusted). */
enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112, PACKED = 151, B_MATRIX = 162 };
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k);
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha,
                      const float *src, int ld, float *dest);
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k, const float *a,
                         int lda, const float *b, int ldb, float beta, float *c, int ldc);
/* bfloat16 inputs, float32 output: AMX or AVX512_BF16 where the CPU has them; on an Intel
 * Xeon without either (model 106) 192 GFLOP/s at [1024,512]x[512,2048], where PyTorch's
 * bfloat16 matmul (oneDNN, emulated) made 56 and its float32 one 204. */
typedef uint16_t bf16;
void cblas_gemm_bf16bf16f32(int layout, int transa, int transb, int m, int n, int k, float alpha,
                            const bf16 *a, int lda, const bf16 *b, int ldb, float beta, float *c,
                            int ldc);

int64_t conclave_threads(void) {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/* Bytes of a [n,k] weight packed by `conclave_pack` for products with `rows` rows. */
int64_t conclave_pack_size(int64_t rows, int64_t n, int64_t k) {
  return (int64_t)cblas_sgemm_pack_get_size(B_MATRIX, (int)rows, (int)n, (int)k);
}

/* w [n,k] row-major (a linear layer's weight) packed as B of a [rows,k] x w^T product;
 * MKL tunes the packing for `rows` but any row count computes on it. */
void conclave_pack(int64_t rows, int64_t n, int64_t k, const float *w, float *dest) {
  cblas_sgemm_pack(ROW_MAJOR, B_MATRIX, TRANS, (int)rows, (int)n, (int)k, 1.0f, w, (int)k, dest);
}

/* exp(x) in float32: 2^(x log2 e) split into a whole power of two (the exponent bits)
 * and 2^f for |f| <= 1/2 (a degree-6 polynomial), in plain arithmetic so the compiler
 * vectorizes it (a libm expf call would not be). Relative error against exp in float64,
 * 2 million points a range: 1.4e-7 for |x| <= 1, 5.3e-7 for |x| <= 10, 3.9e-6 up to the
 * clamp (x log2 e rounded to float32). x is clamped to where the result is a normal float. */
static inline float exp_approx(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  float t = x * 1.44269504088896341f;
  float whole = __builtin_rintf(t);
  float f = t - whole;
  float p = 1.535336188319500e-4f;
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  int32_t bits = ((int32_t)whole + 127) << 23;
  float scale;
  memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

/* float32 to bfloat16, rounding to nearest even; a NaN stays a (quiet) NaN. */
static inline bf16 to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return (bf16)(((u & 0x7fffffffu) > 0x7f800000u) ? ((u >> 16) | 0x40u) : rounded);
}

static inline float as_float(float f) { return f; }

/* out = SiLU(gate) * up * weight for one row, out in float32 (`swiglu_row`) or bfloat16
 * (`swiglu_row_bf16`: the down projection's input in the bfloat16 form). Each its own
 * function with restrict arguments: inlined into the row loop, GCC 12 vectorized it only
 * behind an aliasing check whose scalar side ran (0.9 ms for 128 rows of 1,024 against
 * 0.08 ms). */
#define SWIGLU_ROW(name, out_type, convert)                                                 \
  static void __attribute__((noinline))                                                     \
  name(const float *restrict gate, const float *restrict up, out_type *restrict out,        \
       float weight, int64_t n) {                                                           \
    _Pragma("omp simd") for (int64_t j = 0; j < n; j++) {                                   \
      float g = gate[j];                                                                    \
      out[j] = convert(g / (1.0f + exp_approx(-g)) * up[j] * weight);                       \
    }                                                                                       \
  }
SWIGLU_ROW(swiglu_row, float, as_float)
SWIGLU_ROW(swiglu_row_bf16, bf16, to_bf16)

/* One piece: rows [first, first+rows) of x, all routed to expert e. h: [rows, 2n] scratch,
 * act: [rows, n] scratch. y rows get W_down (weight * SiLU(x W_gate) * (x W_up)). */
static void piece(const void *x, const float *weight, int64_t k, int64_t n, const void *w13,
                  const void *w2, float *y, float *h, float *act, int64_t rows, int inner,
                  int bfloat16) {
  int m = (int)rows, kk = (int)k, nn = (int)n;
  if (bfloat16)  /* the weights as they are, [2n,k] and [k,n]: B transposed */
    cblas_gemm_bf16bf16f32(ROW_MAJOR, NO_TRANS, TRANS, m, 2 * nn, kk, 1.0f, x, kk, w13, kk, 0.0f,
                           h, 2 * nn);
  else
    cblas_sgemm_compute(ROW_MAJOR, NO_TRANS, PACKED, m, 2 * nn, kk, x, kk, w13, kk, 0.0f, h,
                        2 * nn);
#pragma omp parallel for schedule(static) if (inner)
  for (int64_t r = 0; r < rows; r++) {
    const float *g = h + r * 2 * n;
    if (bfloat16)
      swiglu_row_bf16(g, g + n, (bf16 *)act + r * n, weight[r], n);
    else
      swiglu_row(g, g + n, act + r * n, weight[r], n);
  }
  if (bfloat16)
    cblas_gemm_bf16bf16f32(ROW_MAJOR, NO_TRANS, TRANS, m, kk, nn, 1.0f, (const bf16 *)act, nn, w2,
                           nn, 0.0f, y, kk);
  else
    cblas_sgemm_compute(ROW_MAJOR, NO_TRANS, PACKED, m, kk, nn, act, nn, w2, nn, 0.0f, y, kk);
}

/* The experts' FFNs over x [R,k] (rows sorted by expert), into y [R,k] (float32).
 * pieces [count][3]: first row, rows, expert. w13[e]: expert e's gate and up weights
 * ([2n,k], gate rows first), w2[e]: its down weight ([k,n]): packed by `conclave_pack`
 * (float32 x), or bfloat16 as they are (bfloat16 x: `bfloat16` set). weight [R]: each
 * row's routing weight. scratch: conclave_threads() x 3 x max_rows x n floats.
 *
 * With at least two pieces a thread, the pieces are spread over the threads, each
 * running MKL on one thread (no fork and join inside every GEMM, each piece's data in its
 * core's cache): MKL called inside an OpenMP parallel region runs on the calling thread.
 * (libtorch_cpu's `mkl_set_num_threads_local` is the Fortran entry, taking a pointer, so
 * it is not called.) With fewer pieces they run one after another on MKL's threads. */
void conclave_ffn(int64_t count, const int64_t *pieces, const void *x, const float *weight,
                  int64_t k, int64_t n, const void *const *w13, const void *const *w2, float *y,
                  float *scratch, int64_t max_rows, int64_t bfloat16) {
  int64_t threads = conclave_threads();
  int64_t stride = 3 * max_rows * n;
  size_t size = bfloat16 ? sizeof(bf16) : sizeof(float);
  if (threads > 1 && count >= 2 * threads) {
#ifdef _OPENMP
#pragma omp parallel
    {
      float *h = scratch + omp_get_thread_num() * stride;
#pragma omp for schedule(dynamic, 1)
      for (int64_t p = 0; p < count; p++) {
        const int64_t *q = pieces + 3 * p;
        piece((const char *)x + q[0] * k * size, weight + q[0], k, n, w13[q[2]], w2[q[2]],
              y + q[0] * k, h, h + 2 * max_rows * n, q[1], 0, (int)bfloat16);
      }
    }
#endif
  } else {
    for (int64_t p = 0; p < count; p++) {
      const int64_t *q = pieces + 3 * p;
      piece((const char *)x + q[0] * k * size, weight + q[0], k, n, w13[q[2]], w2[q[2]],
            y + q[0] * k, scratch, scratch + 2 * max_rows * n, q[1], 1, (int)bfloat16);
    }
  }
}
