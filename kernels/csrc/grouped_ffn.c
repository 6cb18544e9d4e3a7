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
 *
 * Five forms (`conclave_ffn`'s `form`): float32 on MKL's packed sgemm, bfloat16 on MKL's
 * bfloat16 GEMMs, bfloat16 on this file's own GEMM for CPUs with AVX512_BF16 dot
 * products (`gemm_vnni`), built only where the compiler targets them, and float32 on this
 * file's own GEMM in the CPU's widest FMA vectors (`gemm_f32`), on float32 weights or on
 * bfloat16 ones widened in registers.
 */
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__) && defined(__AVX512BF16__)
#include <immintrin.h>
#define HAVE_VNNI_BF16 1
#else
#define HAVE_VNNI_BF16 0
#endif

enum {
  FORM_F32 = 0,
  FORM_BF16_MKL = 1,
  FORM_BF16_VNNI = 2,
  FORM_F32_FMA = 3,
  FORM_F32_FMA_BF16 = 4
};

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

/* ---- float32 GEMMs on the CPU's FMA vectors (`FORM_F32_FMA`) ----
 *
 * Why our own: MKL's float32 GEMMs take a slow path on AMD CPUs. On an AMD EPYC (Zen 4,
 * family 25 model 17, 2026-12-02) a [128,512] x [512,2048] product ran at 101 GFLOP/s on
 * one thread and 211 on two here, against 73-75 for PyTorch's float32 matmul (MKL); on a
 * Zen 5 a first version made 217 and 434 against MKL's 142-170.
 *
 * The same plan as `gemm_vnni`, in GCC's generic vectors so one source serves AVX-512 (16
 * lanes, tiles of 6 rows x 64 columns in 24 registers), AVX2 (8 lanes, 6 x 16 in 12 of
 * its 16) and anything else the compiler vectorizes: a weight w [n,k] is packed once as
 * [ceil(n/lanes)][k][lanes] (each k's `lanes` output columns side by side, zero-padded),
 * k is cut into blocks of 512 (a 64-column panel of 128 KB stays in L2 across the rows;
 * 256 ran 5-12% slower there), and with gate and up interleaved by half a panel
 * (`native.Kernel.pack_expert`) SiLU(gate) * up * routing weight is computed from
 * each tile as its last step: the [rows, 2n] product is never written. */
#if defined(__AVX512F__)
#define F32_LANES 16
#define F32_VECS 4
#elif defined(__AVX__)
#define F32_LANES 8
#define F32_VECS 2
#else
#define F32_LANES 4
#define F32_VECS 2
#endif
#define F32_ROWS 6
#define F32_KC 512
#define F32_PANEL (F32_LANES * F32_VECS)
typedef float f32v __attribute__((vector_size(F32_LANES * 4)));
/* the same, for loads and stores at any float's address */
typedef float f32v_u __attribute__((vector_size(F32_LANES * 4), aligned(4)));
/* a vector's worth of the bfloat16 layout's 32-bit words (two bfloat16 each) */
typedef uint32_t u32v_u __attribute__((vector_size(F32_LANES * 4), aligned(4), may_alias));
typedef uint32_t u32v __attribute__((vector_size(F32_LANES * 4)));

/* The columns of one tile: gate and up are interleaved by half of it. */
int64_t conclave_f32_panel(void) { return F32_PANEL; }

/* Floats of a [n,k] weight packed by `conclave_pack_f32`. */
int64_t conclave_f32_size(int64_t n, int64_t k) {
  return ((n + F32_LANES - 1) / F32_LANES) * F32_LANES * k;
}

void conclave_pack_f32(int64_t n, int64_t k, const float *w, float *dest) {
  for (int64_t b = 0; b < (n + F32_LANES - 1) / F32_LANES; b++)
    for (int64_t p = 0; p < k; p++)
      for (int64_t j = 0; j < F32_LANES; j++) {
        int64_t col = b * F32_LANES + j;
        dest[(b * k + p) * F32_LANES + j] = col < n ? w[col * k + p] : 0.0f;
      }
}

/* Elements (bfloat16) of a [n,k] weight packed by `conclave_pack_f32_bf16`. */
int64_t conclave_f32_bf16_size(int64_t n, int64_t k) {
  return ((n + 2 * F32_LANES - 1) / (2 * F32_LANES)) * 2 * F32_LANES * k;
}

/* The bfloat16-weight layout (`FORM_F32_FMA_BF16`): columns in pairs of vectors, [ceil(n /
 * 2 lanes)][k][lanes] 32-bit words, word j holding column j's bfloat16 in its low half and
 * column lanes + j's in its high half, zero-padded. One load gives two vectors of float32
 * weights, exactly: word << 16 and word & 0xffff0000, one integer op each. (Chosen over
 * widening bfloat16 with a zero-extending load, which adds a shuffle per vector: on
 * Intel's AVX-512 server cores, on the port of the second 512-bit FMA unit. Not measured
 * against it.) Against float32 weights, 1.35-2.00x at 1-16 tokens on a Zen 4 (half the
 * traffic), 1.01-1.16x from 128 up (`kernels.grouped`). */
void conclave_pack_f32_bf16(int64_t n, int64_t k, const bf16 *w, bf16 *dest) {
  for (int64_t b = 0; b < (n + 2 * F32_LANES - 1) / (2 * F32_LANES); b++)
    for (int64_t p = 0; p < k; p++)
      for (int64_t j = 0; j < 2 * F32_LANES; j++) {
        int64_t col = b * 2 * F32_LANES + j, half = j / F32_LANES, lane = j % F32_LANES;
        dest[((b * k + p) * F32_LANES + lane) * 2 + half] = col < n ? w[col * k + p] : 0;
      }
}

/* One step of k: the tile's weight vectors at p (float32, or widened from a pair of
 * blocks' bfloat16 words), and each row's a[i, p] times them into acc. */
static inline __attribute__((always_inline)) void f32_step(int mr, int nv, int wb,
                                                           f32v acc[][F32_VECS],
                                                           const float *a, int64_t lda,
                                                           const float *b, int64_t bstride,
                                                           int64_t p) {
  f32v w[F32_VECS];
  if (wb) {
    for (int v = 0; v < nv; v += 2) {
      u32v word = *(const u32v_u *)(b + (v / 2) * bstride + p * F32_LANES);
      w[v] = (f32v)(word << 16);
      if (v + 1 < nv) w[v + 1] = (f32v)(word & 0xffff0000u);
    }
  } else {
    for (int v = 0; v < nv; v++) w[v] = *(const f32v_u *)(b + v * bstride + p * F32_LANES);
  }
  for (int i = 0; i < mr; i++) {
    /* a scalar times a vector: GCC broadcasts it from memory, one load. `(f32v){0} +
     * a[..]` (as this read before) cost a scalar add (0 + -0 is not -0, so it stays)
     * and a register broadcast on a shuffle port beside the FMAs: AVX2's 6 x 16 tile,
     * 6 broadcasts per 12 FMAs, ran the layer 1.18-1.34x slower that way (AMD EPYC
     * Zen 4 with AVX-512 off, 2026-12-03); AVX-512's 6 x 64 tile, unchanged. */
    float ai = a[i * lda + p];
    for (int v = 0; v < nv; v++) acc[i][v] += ai * w[v];
  }
}

/* c[mr, lanes*nv] = (first ? 0 : c) + a[mr, kc] . the packed panel b (bstride: 4-byte
 * words from one block of `lanes` columns to the next, or with `wb` of two blocks: the
 * weights in bfloat16, `conclave_pack_f32_bf16`). With `act` (the last k-block of a gate
 * and up panel: half a panel of gate columns, then the same up columns), the tile is not
 * stored: act[i, 0:half] = SiLU(gate) * up * rw[i].
 *
 * A tile of one or two rows (decoding) has too few accumulators to cover the FMA's
 * latency (4 cycles; with two FMA units, 8 in flight): AVX2's 1 x 16 tile has 2, so
 * its FMAs waited on each other. Such tiles run k in `split` interleaved parts, each
 * with accumulators of its own, added at the end (a sum in another order: a row's
 * result then depends on how many rows share its tile, within float32 rounding). */
static inline __attribute__((always_inline)) void f32_tile(int mr, int nv, int wb, int64_t kc,
                                                           const float *a, int64_t lda,
                                                           const float *b, int64_t bstride,
                                                           float *c, int64_t ldc, int first,
                                                           float *act, int64_t ldact,
                                                           const float *rw) {
  const int split = mr > 2 || mr * nv >= 8 ? 1 : mr * nv >= 4 ? 2 : 4;
  f32v acc[F32_ROWS][F32_VECS], part[3][2][F32_VECS];
  for (int i = 0; i < mr; i++)
    for (int v = 0; v < nv; v++) {
      acc[i][v] = first ? (f32v){0} : *(const f32v_u *)(c + i * ldc + F32_LANES * v);
      for (int s = 0; s < split - 1; s++) part[s][i][v] = (f32v){0};
    }
  int64_t p = 0;
  if (split > 1)
    for (; p + split <= kc; p += split) {
      f32_step(mr, nv, wb, acc, a, lda, b, bstride, p);
      for (int s = 1; s < split; s++) f32_step(mr, nv, wb, part[s - 1], a, lda, b, bstride, p + s);
    }
  for (; p < kc; p++) f32_step(mr, nv, wb, acc, a, lda, b, bstride, p);
  for (int s = 0; s < split - 1; s++)
    for (int i = 0; i < mr; i++)
      for (int v = 0; v < nv; v++) acc[i][v] += part[s][i][v];
  if (act && nv == F32_VECS) {
    float tile[F32_ROWS][F32_PANEL];
    for (int i = 0; i < mr; i++) {
      for (int v = 0; v < nv; v++) *(f32v_u *)(tile[i] + F32_LANES * v) = acc[i][v];
      swiglu_row(tile[i], tile[i] + F32_PANEL / 2, act + i * ldact, rw[i], F32_PANEL / 2);
    }
    return;
  }
  for (int i = 0; i < mr; i++)
    for (int v = 0; v < nv; v++) *(f32v_u *)(c + i * ldc + F32_LANES * v) = acc[i][v];
}

/* Each tile shape and weight type a constant, its accumulators in registers (as
 * `vnni_tile_any`). */
#define F32_CASE(R, V)                                                                    \
  case (R) * 8 + (V):                                                                     \
    f32_tile(R, V, 0, kc, a, lda, b, bstride, c, ldc, first, act, ldact, rw);             \
    break;                                                                                \
  case 64 + (R) * 8 + (V):                                                                \
    f32_tile(R, V, 1, kc, a, lda, b, bstride, c, ldc, first, act, ldact, rw);             \
    break;
static void f32_tile_any(int mr, int nv, int wb, int64_t kc, const float *a, int64_t lda,
                         const float *b, int64_t bstride, float *c, int64_t ldc, int first,
                         float *act, int64_t ldact, const float *rw) {
  switch (wb * 64 + mr * 8 + nv) {
    F32_CASE(1, 1) F32_CASE(2, 1) F32_CASE(3, 1) F32_CASE(4, 1) F32_CASE(5, 1) F32_CASE(6, 1)
    F32_CASE(1, 2) F32_CASE(2, 2) F32_CASE(3, 2) F32_CASE(4, 2) F32_CASE(5, 2) F32_CASE(6, 2)
#if F32_VECS == 4
    F32_CASE(1, 3) F32_CASE(2, 3) F32_CASE(3, 3) F32_CASE(4, 3) F32_CASE(5, 3) F32_CASE(6, 3)
    F32_CASE(1, 4) F32_CASE(2, 4) F32_CASE(3, 4) F32_CASE(4, 4) F32_CASE(5, 4) F32_CASE(6, 4)
#endif
  }
}

/* c [m,n] (row stride ldc) = a [m,k] (row stride lda) . w^T, w [n,k] packed by
 * `conclave_pack_f32` (with `wb`: by `conclave_pack_f32_bf16`); the panels spread over
 * the threads when `inner`. A panel whose last columns are not a whole vector runs on a
 * copy of its tile (the packed weight is zero-padded; c is not). With `act`: w is gate
 * and up interleaved by half a panel (n/2 a multiple of it), c only holds the partial
 * sums of k-blocks before the last, and act [m, n/2] (row stride n/2) gets SiLU(gate) *
 * up * rw[row]. */
static void gemm_f32(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                     const void *w, int wb, float *c, int64_t ldc, int inner, float *act,
                     const float *rw) {
  int64_t bstride = k * F32_LANES, panels = (n + F32_PANEL - 1) / F32_PANEL;
#pragma omp parallel for schedule(static) if (inner)
  for (int64_t q = 0; q < panels; q++) {
    int64_t n0 = q * F32_PANEL, cols = n - n0 < F32_PANEL ? n - n0 : F32_PANEL;
    int nv = (int)((cols + F32_LANES - 1) / F32_LANES), ragged = cols % F32_LANES != 0;
    float spare[F32_ROWS * F32_PANEL];
    for (int64_t k0 = 0; k0 < k; k0 += F32_KC) {
      int64_t kc = k - k0 < F32_KC ? k - k0 : F32_KC;
      /* 4-byte words either way: a float, or two bfloat16 of a pair of blocks */
      const float *b = (const float *)w + (n0 / F32_LANES >> wb) * bstride + k0 * F32_LANES;
      int last = k0 + kc >= k;
      for (int64_t m0 = 0; m0 < m; m0 += F32_ROWS) {
        int mr = (int)(m - m0 < F32_ROWS ? m - m0 : F32_ROWS);
        float *to = c + m0 * ldc + n0;
        if (!ragged) {
          f32_tile_any(mr, nv, wb, kc, a + m0 * lda + k0, lda, b, bstride, to, ldc, k0 == 0,
                       act && last ? act + m0 * (n / 2) + n0 / 2 : NULL, n / 2, rw + m0);
          continue;
        }
        for (int i = 0; i < mr && k0; i++) memcpy(spare + i * F32_PANEL, to + i * ldc, cols * 4);
        f32_tile_any(mr, nv, wb, kc, a + m0 * lda + k0, lda, b, bstride, spare, F32_PANEL,
                     k0 == 0, NULL, 0, NULL);
        for (int i = 0; i < mr; i++) memcpy(to + i * ldc, spare + i * F32_PANEL, cols * 4);
      }
    }
  }
}

/* ---- bfloat16 GEMMs on AVX512_BF16 dot products (`FORM_BF16_VNNI`) ----
 *
 * Why our own: on a 2-core AMD EPYC (family 26, AVX512_BF16, no AMX; 2026-12-02) MKL's
 * bfloat16 GEMM ran the layer at 22.9 ms for 512 tokens where oneDNN's ran it at 6.8
 * (MKL picks a slow path on AMD CPUs), and oneDNN's GEMMs cannot be called from here
 * (libtorch_cpu exports no C entry for them). This one, a [128,512] x [512,2048]
 * product: 438 GFLOP/s on one thread, 830 on two, against 625-687 for PyTorch's dense
 * bfloat16 matmul on the same machine.
 *
 * A weight w [n,k] (a linear layer's) is packed once into VNNI order, [ceil(n/16)]
 * [ceil(k/2)][16][2]: for each block of 16 output columns, each pair of k, the 16
 * columns' two values side by side, zero-padded, so one 64-byte load is one
 * `vdpbf16ps` operand. The micro-kernel keeps a tile of up to 6 rows x 64 columns in 24
 * float32 registers: per pair of k, 4 loads of the weight, 6 broadcasts of a row's pair,
 * 24 dot products. k is cut into blocks of 512 (a 64-column weight panel of 64 KB stays in
 * L2 across the rows; 256 ran 1-6% slower there). The gate and up weights are packed
 * interleaved by 32 rows (`native.Kernel.pack_expert`), so each tile holds 32 gate
 * columns and the same 32 up columns, and SiLU(gate) * up * routing weight is computed
 * from the registers as bfloat16: the [rows, 2n] float32 product is never written. */
#define VNNI_ROWS 6
#define VNNI_VECS 4
#define VNNI_KC 512

int64_t conclave_vnni(void) { return HAVE_VNNI_BF16; }

/* Elements (bfloat16) of a [n,k] weight packed by `conclave_pack_vnni`. */
int64_t conclave_vnni_size(int64_t n, int64_t k) { return ((n + 15) / 16) * 16 * ((k + 1) / 2) * 2; }

void conclave_pack_vnni(int64_t n, int64_t k, const bf16 *w, bf16 *dest) {
  int64_t pairs = (k + 1) / 2, blocks = (n + 15) / 16;
  for (int64_t b = 0; b < blocks; b++)
    for (int64_t p = 0; p < pairs; p++)
      for (int64_t j = 0; j < 16; j++)
        for (int64_t t = 0; t < 2; t++) {
          int64_t col = b * 16 + j, kk = 2 * p + t;
          dest[((b * pairs + p) * 16 + j) * 2 + t] = (col < n && kk < k) ? w[col * k + kk] : 0;
        }
}

#if HAVE_VNNI_BF16
/* SiLU(g) = g / (1 + exp(-g)) on 16 lanes: `exp_approx` in vector form (scalef applies
 * the whole power of two). */
static inline __m512 silu16(__m512 g) {
  __m512 x = _mm512_min_ps(_mm512_max_ps(_mm512_sub_ps(_mm512_setzero_ps(), g),
                                         _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.3f));
  __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
  __m512 whole = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 f = _mm512_sub_ps(t, whole);
  __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  __m512 e = _mm512_scalef_ps(p, whole);
  return _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

/* c[mr, 16*nv] (the last vector's columns masked by `tail`) = (first ? 0 : c) +
 * a[mr, 2*pairs] . the packed panel b; `odd`: one more k whose pair partner is past the
 * row's end (read as zero, never loaded). lda, ldc in elements; bstride: elements from one
 * 16-column block of the packed weight to the next. With `act` (the last k-block of a
 * gate and up panel: 32 gate columns, then the same 32 up columns), the tile is not
 * stored: act[i, 0:32] = SiLU(gate) * up * rw[i] in bfloat16, from the registers. */
static inline __attribute__((always_inline)) void vnni_tile(int mr, int nv, int64_t pairs,
                                                            int odd, const bf16 *a, int64_t lda,
                                                            const bf16 *b, int64_t bstride,
                                                            float *c, int64_t ldc, int first,
                                                            __mmask16 tail, bf16 *act,
                                                            int64_t ldact, const float *rw) {
  __m512 acc[VNNI_ROWS][VNNI_VECS];
  for (int i = 0; i < mr; i++)
    for (int v = 0; v < nv; v++) {
      __mmask16 mask = v == nv - 1 ? tail : 0xffff;
      acc[i][v] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mask, c + i * ldc + 16 * v);
    }
  for (int64_t p = 0; p < pairs + odd; p++) {
    __m512bh w[VNNI_VECS];
    for (int v = 0; v < nv; v++) w[v] = (__m512bh)_mm512_loadu_si512(b + v * bstride + p * 32);
    for (int i = 0; i < mr; i++) {
      int32_t pair;
      if (p < pairs)
        memcpy(&pair, a + i * lda + 2 * p, sizeof pair);
      else
        pair = a[i * lda + 2 * p];  /* the last k of an odd k: its partner is zero */
      __m512bh ai = (__m512bh)_mm512_set1_epi32(pair);
      for (int v = 0; v < nv; v++) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], ai, w[v]);
    }
  }
  if (act && nv == VNNI_VECS) {
    for (int i = 0; i < mr; i++) {
      __m512 weight = _mm512_set1_ps(rw[i]);
      for (int v = 0; v < 2; v++) {
        __m512 h = _mm512_mul_ps(_mm512_mul_ps(silu16(acc[i][v]), acc[i][v + 2]), weight);
        _mm256_storeu_si256((__m256i *)(act + i * ldact + 16 * v),
                            (__m256i)_mm512_cvtneps_pbh(h));
      }
    }
    return;
  }
  for (int i = 0; i < mr; i++)
    for (int v = 0; v < nv; v++) {
      __mmask16 mask = v == nv - 1 ? tail : 0xffff;
      _mm512_mask_storeu_ps(c + i * ldc + 16 * v, mask, acc[i][v]);
    }
}

/* One tile's shape as a constant, so each of the 24 calls is compiled with its
 * accumulators in registers (a runtime shape left them in memory). */
#define VNNI_CASE(R, V)                                                                    \
  case (R) * 8 + (V):                                                                      \
    vnni_tile(R, V, pairs, odd, a, lda, b, bstride, c, ldc, first, tail, act, ldact, rw);  \
    break;
static void vnni_tile_any(int mr, int nv, int64_t pairs, int odd, const bf16 *a, int64_t lda,
                          const bf16 *b, int64_t bstride, float *c, int64_t ldc, int first,
                          __mmask16 tail, bf16 *act, int64_t ldact, const float *rw) {
  switch (mr * 8 + nv) {
    VNNI_CASE(1, 1) VNNI_CASE(1, 2) VNNI_CASE(1, 3) VNNI_CASE(1, 4)
    VNNI_CASE(2, 1) VNNI_CASE(2, 2) VNNI_CASE(2, 3) VNNI_CASE(2, 4)
    VNNI_CASE(3, 1) VNNI_CASE(3, 2) VNNI_CASE(3, 3) VNNI_CASE(3, 4)
    VNNI_CASE(4, 1) VNNI_CASE(4, 2) VNNI_CASE(4, 3) VNNI_CASE(4, 4)
    VNNI_CASE(5, 1) VNNI_CASE(5, 2) VNNI_CASE(5, 3) VNNI_CASE(5, 4)
    VNNI_CASE(6, 1) VNNI_CASE(6, 2) VNNI_CASE(6, 3) VNNI_CASE(6, 4)
  }
}

/* c [m,n] float32 (row stride ldc) = a [m,k] bfloat16 (row stride lda) . w^T, w [n,k]
 * packed by `conclave_pack_vnni`; the 64-column panels spread over the threads when
 * `inner`. With `act`: w is gate and up interleaved by 32 rows (n/2 a multiple of 32),
 * c only holds the partial sums of k-blocks before the last, and act [m, n/2] bfloat16
 * (row stride n/2) gets SiLU(gate) * up * rw[row]. */
static void gemm_vnni(int64_t m, int64_t n, int64_t k, const bf16 *a, int64_t lda,
                      const bf16 *w, float *c, int64_t ldc, int inner, bf16 *act,
                      const float *rw) {
  int64_t bstride = ((k + 1) / 2) * 32, panel = 16 * VNNI_VECS;
  int64_t panels = (n + panel - 1) / panel;
#pragma omp parallel for schedule(static) if (inner)
  for (int64_t q = 0; q < panels; q++) {
    int64_t n0 = q * panel, cols = n - n0 < panel ? n - n0 : panel;
    int nv = (int)((cols + 15) / 16);
    __mmask16 tail = cols % 16 ? (__mmask16)((1u << (cols % 16)) - 1) : (__mmask16)0xffff;
    for (int64_t k0 = 0; k0 < k; k0 += VNNI_KC) {
      int64_t kc = k - k0 < VNNI_KC ? k - k0 : VNNI_KC;
      const bf16 *b = w + (n0 / 16) * bstride + (k0 / 2) * 32;
      int last = k0 + kc >= k;
      for (int64_t m0 = 0; m0 < m; m0 += VNNI_ROWS) {
        int mr = (int)(m - m0 < VNNI_ROWS ? m - m0 : VNNI_ROWS);
        vnni_tile_any(mr, nv, kc / 2, (int)(kc % 2), a + m0 * lda + k0, lda, b, bstride,
                      c + m0 * ldc + n0, ldc, k0 == 0, tail,
                      act && last ? act + m0 * (n / 2) + n0 / 2 : NULL, n / 2, rw + m0);
      }
    }
  }
}
#else
static void gemm_vnni(int64_t m, int64_t n, int64_t k, const bf16 *a, int64_t lda,
                      const bf16 *w, float *c, int64_t ldc, int inner, bf16 *act,
                      const float *rw) {
  (void)m, (void)n, (void)k, (void)a, (void)lda, (void)w, (void)c, (void)ldc, (void)inner;
  (void)act, (void)rw;
}
#endif

/* One piece: rows [first, first+rows) of x, all routed to expert e. h: [rows, 2n] scratch,
 * act: [rows, n] scratch. y rows get W_down (weight * SiLU(x W_gate) * (x W_up)). */
static void piece(const void *x, const float *weight, int64_t k, int64_t n, const void *w13,
                  const void *w2, float *y, float *h, float *act, int64_t rows, int inner,
                  int form) {
  int m = (int)rows, kk = (int)k, nn = (int)n, bfloat16 = form != FORM_F32;
  if (form == FORM_F32_FMA || form == FORM_F32_FMA_BF16) {  /* SiLU * up * weight: tiles */
    int wb = form == FORM_F32_FMA_BF16;
    gemm_f32(rows, 2 * n, k, x, k, w13, wb, h, 2 * n, inner, act, weight);
    gemm_f32(rows, k, n, act, n, w2, wb, y, k, inner, NULL, NULL);
    return;
  }
  if (form == FORM_BF16_VNNI) {  /* SiLU * up * weight as each tile's last step */
    gemm_vnni(rows, 2 * n, k, x, k, w13, h, 2 * n, inner, (bf16 *)act, weight);
    gemm_vnni(rows, k, n, (const bf16 *)act, n, w2, y, k, inner, NULL, NULL);
    return;
  }
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

/* Routing's bookkeeping for `conclave_ffn`, in one call instead of seven PyTorch ops
 * (argsort, bincount, the gathers, the piece table: ~0.06 ms at 1 token, where the whole
 * layer takes ~0.15). ids [tokens, topk] (experts 0..experts-1), weights [tokens, topk]
 * float32, x [tokens, k] (bfloat16 when `x_bf16`, else float32). Sorted by expert, stably:
 * order [R] (each row's flat token * topk + slot), w [R] (its weight), xs [R, k] (its
 * token's row). pieces [<= R][3]: each expert's rows cut into equal calls of at most
 * `block` rows (`native.pieces`). counts: 2 x experts scratch. Returns the number of
 * pieces, and the most rows one has in *max_rows; -1 if an id is out of range. */
int64_t conclave_route(int64_t tokens, int64_t topk, int64_t experts, const int32_t *ids,
                       const float *weights, int64_t block, const void *x, int64_t k,
                       int64_t x_bf16, void *xs, float *w, int64_t *order, int64_t *pieces,
                       int64_t *counts, int64_t *max_rows) {
  int64_t rows = tokens * topk, *cursor = counts + experts, count = 0;
  size_t size = x_bf16 ? sizeof(bf16) : sizeof(float);
  memset(counts, 0, (size_t)experts * sizeof *counts);
  for (int64_t r = 0; r < rows; r++) {
    if (ids[r] < 0 || ids[r] >= experts) return -1;
    counts[ids[r]]++;
  }
  *max_rows = 0;
  for (int64_t e = 0, start = 0; e < experts; start += counts[e], e++) {
    cursor[e] = start;
    if (!counts[e]) continue;
    int64_t calls = (counts[e] + block - 1) / block, each = (counts[e] + calls - 1) / calls;
    for (int64_t a = start; a < start + counts[e]; a += each, count++) {
      int64_t n = start + counts[e] - a < each ? start + counts[e] - a : each;
      pieces[3 * count] = a, pieces[3 * count + 1] = n, pieces[3 * count + 2] = e;
      if (n > *max_rows) *max_rows = n;
    }
  }
  for (int64_t r = 0; r < rows; r++) {
    int64_t at = cursor[ids[r]]++;
    order[at] = r, w[at] = weights[r];
  }
#pragma omp parallel for schedule(static) if (rows * k > 65536)
  for (int64_t at = 0; at < rows; at++)
    memcpy((char *)xs + at * k * size, (const char *)x + order[at] / topk * k * size, k * size);
  return count;
}

/* out[t] = the sum of token t's topk rows of y (its rows' places in y: inverse[t * topk +
 * slot]), in float32 or rounded once to bfloat16: a gather per token, spread over the
 * threads (a scatter-add from the experts' rows would race where one token's experts run
 * on two threads). Against the rows rounded to bfloat16 and scatter-added by PyTorch
 * (`index_add_`): 0.16 + 0.18 ms at 512 tokens on the AMD EPYC, and one rounding, not two. */
static void combine(int64_t rows, int64_t topk, int64_t k, float *y, const int64_t *order,
                    int64_t *inverse, void *out, int out_bf16) {
  for (int64_t r = 0; r < rows; r++) inverse[order[r]] = r;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < rows / topk; t++) {
    float *acc = y + inverse[t * topk] * k;
    for (int64_t j = 1; j < topk; j++) {
      const float *add = y + inverse[t * topk + j] * k;
#pragma omp simd
      for (int64_t c = 0; c < k; c++) acc[c] += add[c];
    }
    if (out_bf16) {
      bf16 *o = (bf16 *)out + t * k;
#pragma omp simd
      for (int64_t c = 0; c < k; c++) o[c] = to_bf16(acc[c]);
    } else {
      memcpy((float *)out + t * k, acc, k * sizeof(float));
    }
  }
}

/* The experts' FFNs over x [R,k] (rows sorted by expert), into y [R,k] (float32).
 * pieces [count][3]: first row, rows, expert. w13[e]: expert e's gate and up weights
 * ([2n,k], gate rows first), w2[e]: its down weight ([k,n]): packed by `conclave_pack`
 * (float32 x, FORM_F32), bfloat16 as they are (bfloat16 x, FORM_BF16_MKL), or packed by
 * `conclave_pack_vnni` (bfloat16 x, FORM_BF16_VNNI: only where `conclave_vnni()`; gate and
 * up interleaved, n a multiple of 32) or by `conclave_pack_f32` (float32 x, FORM_F32_FMA;
 * gate and up interleaved, n a multiple of half a panel) or `conclave_pack_f32_bf16`
 * (float32 x, FORM_F32_FMA_BF16: the same, the weights in bfloat16). weight [R]: each
 * row's routing weight. scratch: conclave_threads() x 3 x max_rows x n floats. With `out` (else y is the result): order
 * [R] (the flat token * topk + slot of each sorted row), inverse [R] (scratch) and out
 * [R/topk, k] get each token's topk rows summed (`combine`).
 *
 * With at least two pieces a thread, the pieces are spread over the threads, each
 * running MKL on one thread (no fork and join inside every GEMM, each piece's data in its
 * core's cache): MKL called inside an OpenMP parallel region runs on the calling thread.
 * (libtorch_cpu's `mkl_set_num_threads_local` is the Fortran entry, taking a pointer, so
 * it is not called.) With fewer pieces they run one after another on MKL's threads. */
void conclave_ffn(int64_t count, const int64_t *pieces, const void *x, const float *weight,
                  int64_t k, int64_t n, const void *const *w13, const void *const *w2, float *y,
                  float *scratch, int64_t max_rows, int64_t form, const int64_t *order,
                  int64_t *inverse, int64_t topk, void *out, int64_t out_bf16) {
  int64_t threads = conclave_threads();
  int64_t stride = 3 * max_rows * n;
  int float_x = form == FORM_F32 || form == FORM_F32_FMA || form == FORM_F32_FMA_BF16;
  size_t size = float_x ? sizeof(float) : sizeof(bf16);
  if (threads > 1 && count >= 2 * threads) {
#ifdef _OPENMP
#pragma omp parallel
    {
      float *h = scratch + omp_get_thread_num() * stride;
#pragma omp for schedule(dynamic, 1)
      for (int64_t p = 0; p < count; p++) {
        const int64_t *q = pieces + 3 * p;
        piece((const char *)x + q[0] * k * size, weight + q[0], k, n, w13[q[2]], w2[q[2]],
              y + q[0] * k, h, h + 2 * max_rows * n, q[1], 0, (int)form);
      }
    }
#endif
  } else {
    for (int64_t p = 0; p < count; p++) {
      const int64_t *q = pieces + 3 * p;
      piece((const char *)x + q[0] * k * size, weight + q[0], k, n, w13[q[2]], w2[q[2]],
            y + q[0] * k, scratch, scratch + 2 * max_rows * n, q[1], 1, (int)form);
    }
  }
  if (out) {
    int64_t rows = 0;
    for (int64_t p = 0; p < count; p++) rows += pieces[3 * p + 1];
    combine(rows, topk, k, y, order, inverse, out, (int)out_bf16);
  }
}
