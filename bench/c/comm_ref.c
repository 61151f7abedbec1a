// The same MPI collectives as bench/comm.ts's Megalith worker, called directly from C, for the
// side-by-side in `npm run bench -- comm`. Same sizes, same timing: for each size, `iters`
// back-to-back calls per repetition, best of `reps` repetitions, a barrier before each.
//
//   mpirun ... comm_ref [multiple|single]
//   mpirun -np 1 ... comm_ref overhead    nanoseconds per 1 KiB MPI_Allreduce on a 1-rank world
//   mpirun ... comm_ref alltoall          MPI_Alltoall, 16 KiB to 16 MiB, for `npm run bench -- moe`
//                                         (thread multiple; {"sizes": [{"bytes", "alltoall_gbs"}]})
//
// "multiple" initialises like Megalith (MPI_THREAD_MULTIPLE, which Megalith's communication
// threads need); "single" is plain MPI_Init, to show what thread safety itself costs.
// Rank 0 prints one JSON line: {"sizes": [{"bytes", "allreduce_gbs", "reducescatter_gbs", "allgather_gbs"}]}.
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int g_size;

static void ar(float* a, float* b, int n) { (void)b; MPI_Allreduce(MPI_IN_PLACE, a, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD); }
static void rs(float* a, float* b, int n) { MPI_Reduce_scatter_block(a, b, n / g_size, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD); }
static void ag(float* a, float* b, int n) { MPI_Allgather(b, n / g_size, MPI_FLOAT, a, n / g_size, MPI_FLOAT, MPI_COMM_WORLD); }
// Block j of a goes to rank j; block i of b came from rank i (MoE token dispatch).
static void a2a(float* a, float* b, int n) { MPI_Alltoall(a, n / g_size, MPI_FLOAT, b, n / g_size, MPI_FLOAT, MPI_COMM_WORLD); }

// Seconds per call: the best of `reps` repetitions of `iters` calls (plus one warm-up).
static double best_of(int reps, int iters, void (*fn)(float*, float*, int), float* a, float* b, int n) {
  double best = 1e30;
  for (int r = 0; r < reps + 1; r++) {
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (int i = 0; i < iters; i++) fn(a, b, n);
    double dt = (MPI_Wtime() - t0) / iters;
    // Every rank agrees on the slowest rank's time, as the Megalith worker does.
    MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (r > 0 && dt < best) best = dt;
  }
  return best;
}

int main(int argc, char** argv) {
  int provided = 0;
  if (argc > 1 && strcmp(argv[1], "single") == 0) MPI_Init(&argc, &argv);
  else MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rank;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  if (argc > 1 && strcmp(argv[1], "overhead") == 0) {
    // No peer to wait for: what one call costs in MPI itself (the binding's overhead comes on top).
    float a[256] = {0};
    double best = 1e30;
    for (int r = 0; r < 10; r++) {
      double t0 = MPI_Wtime();
      for (int i = 0; i < 200000; i++) MPI_Allreduce(MPI_IN_PLACE, a, 256, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
      double dt = (MPI_Wtime() - t0) / 200000;
      if (dt < best) best = dt;
    }
    if (rank == 0) printf("{\"ns\": %.1f}\n", best * 1e9);
    MPI_Finalize();
    return 0;
  }
  if (argc > 1 && strcmp(argv[1], "alltoall") == 0) {
    // The sizes and timing of bench/moe.ts's Megalith worker; bandwidth counts the whole input buffer.
    if (rank == 0) printf("{\"sizes\": [");
    for (long bytes = 16L << 10; bytes <= 16L << 20; bytes *= 4) {
      int n = (int)(bytes / 4);
      float* a = calloc((size_t)n, 4);
      float* b = calloc((size_t)n, 4);
      long iters = (16L << 20) / bytes;
      if (iters > 1000) iters = 1000;
      if (iters < 1) iters = 1;
      double t = best_of(7, (int)iters, a2a, a, b, n);
      if (rank == 0) printf("%s{\"bytes\": %ld, \"alltoall_gbs\": %.4f}", bytes == (16L << 10) ? "" : ", ", bytes, bytes / t / 1e9);
      free(a);
      free(b);
    }
    if (rank == 0) printf("]}\n");
    MPI_Finalize();
    return 0;
  }
  if (rank == 0) printf("{\"sizes\": [");
  int first = 1;
  for (long bytes = 1024; bytes <= 64L << 20; bytes *= 4) {
    int n = (int)(bytes / 4);
    float* a = calloc((size_t)n, 4);
    float* b = calloc((size_t)n, 4);
    long iters = (16L << 20) / bytes;  // about 16 MiB moved per repetition
    if (iters > 1000) iters = 1000;
    if (iters < 1) iters = 1;
    int reps = 7;
    double t1 = best_of(reps, (int)iters, ar, a, b, n), t2 = best_of(reps, (int)iters, rs, a, b, n), t3 = best_of(reps, (int)iters, ag, a, b, n);
    if (rank == 0)
      printf("%s{\"bytes\": %ld, \"allreduce_gbs\": %.4f, \"reducescatter_gbs\": %.4f, \"allgather_gbs\": %.4f}", first ? "" : ", ", bytes,
             bytes / t1 / 1e9, bytes / t2 / 1e9, bytes / t3 / 1e9);
    first = 0;
    free(a);
    free(b);
  }
  if (rank == 0) printf("]}\n");
  MPI_Finalize();
  return 0;
}
