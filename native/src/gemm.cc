// Matrix multiply through OpenBLAS's cblas_sgemm, parallelised by our own pool.
//
// OpenBLAS is set to one thread: its own pthread pool would spin against ours between calls
// (the 1.5-3.5x loss seen in PyTorch's stock CPU setup). Large problems are split into
// independent row (or column) panels, one sgemm per panel per thread; batched problems split
// over the batch first.
#include <algorithm>
#include <cblas.h>

#include "megalith.h"

namespace mg {

void gemm_f32_serial(bool ta, bool tb, i64 M, i64 N, i64 K, float alpha, const float* A, i64 lda,
                     const float* B, i64 ldb, float beta, float* C, i64 ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    for (i64 i = 0; i < M; i++)
      for (i64 j = 0; j < N; j++) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
    return;
  }
  if (M == 1) {
    // One row: a matrix-vector product. sgemv streams B once at memory bandwidth, where an
    // M=1 sgemm runs its packing path (measured here: 27 vs 11 GB/s) - batch-1 decoding.
    const int incx = ta ? static_cast<int>(lda) : 1;
    if (tb)  // B stored [N, K]: y = B x
      cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(N), static_cast<int>(K), alpha, B, static_cast<int>(ldb), A, incx, beta, C, 1);
    else     // B stored [K, N]: y = B^T x
      cblas_sgemv(CblasRowMajor, CblasTrans, static_cast<int>(K), static_cast<int>(N), alpha, B, static_cast<int>(ldb), A, incx, beta, C, 1);
    return;
  }
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), alpha, A,
              static_cast<int>(lda), B, static_cast<int>(ldb), beta, C, static_cast<int>(ldc));
}

void gemm_f32(bool ta, bool tb, i64 M, i64 N, i64 K, float alpha, const float* A, i64 lda, i64 sa,
              const float* B, i64 ldb, i64 sb, float beta, float* C, i64 ldc, i64 sc, i64 batch) {
  const i64 nt = num_threads();
  const double flops = 2.0 * M * N * K * batch;
  // A matrix-vector product (M = 1, decode) is bound by reading B, not by FLOPs, and one thread
  // cannot pull the machine's bandwidth: split it once B passes 256 KiB (GPT-2's 768x768
  // attention projection, 2.4 MB, ran single-threaded under the FLOP threshold).
  const bool serial = M == 1 ? 4.0 * N * K * batch < 262144.0 : flops < 2e6;
  if (nt == 1 || serial) {
    for (i64 b = 0; b < batch; b++)
      gemm_f32_serial(ta, tb, M, N, K, alpha, A + b * sa, lda, B + b * sb, ldb, beta, C + b * sc, ldc);
    return;
  }
  if (batch >= nt * 2 || (batch >= nt && batch % nt == 0)) {
    parallel_for(batch, 1, [&](i64 lo, i64 hi) {
      for (i64 b = lo; b < hi; b++)
        gemm_f32_serial(ta, tb, M, N, K, alpha, A + b * sa, lda, B + b * sb, ldb, beta, C + b * sc, ldc);
    });
    return;
  }
  for (i64 b = 0; b < batch; b++) {
    const float* Ab = A + b * sa;
    const float* Bb = B + b * sb;
    float* Cb = C + b * sc;
    // Split rows when there are enough of them, else columns (decode-time M=1 matmuls).
    if (M >= 16 * nt) {
      i64 per = ((M + nt - 1) / nt + 7) / 8 * 8;
      parallel_for(M, per, [&](i64 lo, i64 hi) {
        // Row i of op(A) starts at A + i*lda (no transpose) or at column i (transpose).
        const float* Ap = ta ? Ab + lo : Ab + lo * lda;
        gemm_f32_serial(ta, tb, hi - lo, N, K, alpha, Ap, lda, Bb, ldb, beta, Cb + lo * ldc, ldc);
      });
    } else {
      i64 per = ((N + nt - 1) / nt + 15) / 16 * 16;
      parallel_for(N, per, [&](i64 lo, i64 hi) {
        const float* Bp = tb ? Bb + lo * ldb : Bb + lo;
        gemm_f32_serial(ta, tb, M, hi - lo, K, alpha, Ab, lda, Bp, ldb, beta, Cb + lo, ldc);
      });
    }
  }
}

}  // namespace mg
