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

/* exp(x) in float32 to ~2e-7 relative: 2^(x log2 e) split into a whole power of two (the
 * exponent bits) and 2^f for |f| <= 1/2 (a degree-6 polynomial), in plain arithmetic so
 * the compiler vectorizes it (a libm expf call would not be). x is clamped to where the
 * result is a normal float. */
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

/* out = SiLU(gate) * up * weight for one row. Its own function with restrict arguments:
 * inlined into the row loop, GCC 12 vectorized it only behind an aliasing check whose
 * scalar side ran (0.9 ms for 128 rows of 1,024 against 0.08 ms). */
static void __attribute__((noinline))
swiglu_row(const float *restrict gate, const float *restrict up, float *restrict out,
           float weight, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; j++) {
    float g = gate[j];
    out[j] = g / (1.0f + exp_approx(-g)) * up[j] * weight;
  }
}

/* One piece: rows [first, first+rows) of x, all routed to expert e. h: [rows, 2n] scratch,
 * act: [rows, n] scratch. y rows get W_down (weight * SiLU(x W_gate) * (x W_up)). */
static void piece(const float *x, const float *weight, int64_t k, int64_t n, const float *w13,
                  const float *w2, float *y, float *h, float *act, int64_t rows, int inner) {
  cblas_sgemm_compute(ROW_MAJOR, NO_TRANS, PACKED, (int)rows, (int)(2 * n), (int)k, x, (int)k, w13,
                      (int)k, 0.0f, h, (int)(2 * n));
  if (inner) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) swiglu_row(h + r * 2 * n, h + r * 2 * n + n, act + r * n, weight[r], n);
  } else {
    for (int64_t r = 0; r < rows; r++) swiglu_row(h + r * 2 * n, h + r * 2 * n + n, act + r * n, weight[r], n);
  }
  cblas_sgemm_compute(ROW_MAJOR, NO_TRANS, PACKED, (int)rows, (int)k, (int)n, act, (int)n, w2, (int)n,
                      0.0f, y, (int)k);
}

/* The experts' FFNs over x [R,k] (rows sorted by expert), into y [R,k].
 * pieces [count][3]: first row, rows, expert. w13[e]: expert e's gate and up weights
 * ([2n,k], gate rows first) packed; w2[e]: its down weight ([k,n]) packed. weight [R]:
 * each row's routing weight. scratch: conclave_threads() x 3 x max_rows x n floats.
 *
 * With at least two pieces a thread, the pieces are spread over the threads, each
 * running MKL on one thread (no fork and join inside every GEMM, each piece's data in its
 * core's cache): MKL called inside an OpenMP parallel region runs on the calling thread.
 * (libtorch_cpu's `mkl_set_num_threads_local` is the Fortran entry, taking a pointer, so
 * it is not called.) With fewer pieces they run one after another on MKL's threads. */
void conclave_ffn(int64_t count, const int64_t *pieces, const float *x, const float *weight,
                  int64_t k, int64_t n, const float *const *w13, const float *const *w2, float *y,
                  float *scratch, int64_t max_rows) {
  int64_t threads = conclave_threads();
  int64_t stride = 3 * max_rows * n;
  if (threads > 1 && count >= 2 * threads) {
#ifdef _OPENMP
#pragma omp parallel
    {
      float *h = scratch + omp_get_thread_num() * stride;
#pragma omp for schedule(dynamic, 1)
      for (int64_t p = 0; p < count; p++) {
        const int64_t *q = pieces + 3 * p;
        piece(x + q[0] * k, weight + q[0], k, n, w13[q[2]], w2[q[2]], y + q[0] * k, h,
              h + 2 * max_rows * n, q[1], 0);
      }
    }
#endif
  } else {
    for (int64_t p = 0; p < count; p++) {
      const int64_t *q = pieces + 3 * p;
      piece(x + q[0] * k, weight + q[0], k, n, w13[q[2]], w2[q[2]], y + q[0] * k, scratch,
            scratch + 2 * max_rows * n, q[1], 1);
    }
  }
}
