// Reference timings straight from C, for bench/ops.ts: the same cblas_sgemm calls with
// OpenBLAS's own threads, and memcpy bandwidth. Prints one JSON object.
// Built at bench time: cc -O3 bench/c/ops_ref.c -lopenblas
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static float* buf(size_t n) {
  float* p = aligned_alloc(64, ((n * 4 + 63) / 64) * 64);
  for (size_t i = 0; i < n; i++) p[i] = (float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
  return p;
}

// Best-of-reps seconds for C[b] = A[b] @ B[b] (row major, no transposes).
static double time_gemm(int batch, int M, int N, int K, int reps) {
  float* A = buf((size_t)batch * M * K);
  float* B = buf((size_t)batch * K * N);
  float* C = buf((size_t)batch * M * N);
  double best = 1e30;
  for (int r = 0; r < reps + 1; r++) {
    double t0 = now();
    for (int b = 0; b < batch; b++)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, A + (size_t)b * M * K, K,
                  B + (size_t)b * K * N, N, 0.0f, C + (size_t)b * M * N, N);
    double dt = now() - t0;
    if (r > 0 && dt < best) best = dt;  // first run warms up
  }
  free(A); free(B); free(C);
  return best;
}

int main(int argc, char** argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 2;
  openblas_set_num_threads(threads);
  // shapes: batch M N K
  int shapes[][4] = {{1, 2048, 3072, 768}, {1, 2048, 768, 3072}, {1, 2048, 50304, 768}, {96, 512, 512, 64}, {96, 512, 64, 512}};
  int ns = sizeof(shapes) / sizeof(shapes[0]);
  printf("{\"threads\": %d, \"gemm\": [", threads);
  for (int s = 0; s < ns; s++) {
    int b = shapes[s][0], M = shapes[s][1], N = shapes[s][2], K = shapes[s][3];
    int reps = (double)M * N * K * b > 5e10 ? 2 : 5;
    double t = time_gemm(b, M, N, K, reps);
    printf("%s{\"batch\": %d, \"M\": %d, \"N\": %d, \"K\": %d, \"seconds\": %.6f, \"gflops\": %.2f}", s ? ", " : "", b, M, N, K, t,
           2.0 * b * M * N * K / t / 1e9);
  }
  size_t n = (size_t)64 << 20;  // 256 MiB per buffer
  float* src = buf(n);
  float* dst = buf(n);
  double best = 1e30;
  for (int r = 0; r < 6; r++) {
    double t0 = now();
    memcpy(dst, src, n * 4);
    double dt = now() - t0;
    if (r > 0 && dt < best) best = dt;
  }
  printf("], \"memcpy_gbs\": %.2f}\n", 2.0 * n * 4 / best / 1e9);
  free(src); free(dst);
  return 0;
}
