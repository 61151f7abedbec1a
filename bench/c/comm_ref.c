// The same MPI collectives as bench/_comm_worker.ts, called directly from C, for the side-by-side
// in `npm run bench -- comm`. Prints rank 0's JSON: {sizes: [{bytes, allreduce_gbs, ...}]}.
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

static double best_of(int reps, void (*fn)(float*, float*, int), float* a, float* b, int n) {
  double best = 1e30;
  for (int r = 0; r < reps + 1; r++) {
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    fn(a, b, n);
    double dt = MPI_Wtime() - t0;
    if (r > 0 && dt < best) best = dt;
  }
  return best;
}
static int g_size;
static void ar(float* a, float* b, int n) { (void)b; MPI_Allreduce(MPI_IN_PLACE, a, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD); }
static void rs(float* a, float* b, int n) { MPI_Reduce_scatter_block(a, b, n / g_size, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD); }
static void ag(float* a, float* b, int n) { MPI_Allgather(a, n / g_size, MPI_FLOAT, b, n / g_size, MPI_FLOAT, MPI_COMM_WORLD); }

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  if (rank == 0) printf("{\"sizes\": [");
  int first = 1;
  for (long bytes = 1024; bytes <= 64L << 20; bytes *= 16) {
    int n = (int)(bytes / 4);
    float* a = calloc(n, 4);
    float* b = calloc(n, 4);
    int reps = bytes > (1 << 20) ? 5 : 50;
    double t1 = best_of(reps, ar, a, b, n), t2 = best_of(reps, rs, a, b, n), t3 = best_of(reps, ag, a, b, n);
    if (rank == 0) printf("%s{\"bytes\": %ld, \"allreduce_gbs\": %.3f, \"reducescatter_gbs\": %.3f, \"allgather_gbs\": %.3f}", first ? "" : ", ",
                          bytes, bytes / t1 / 1e9, bytes / t2 / 1e9, bytes / t3 / 1e9);
    first = 0;
    free(a);
    free(b);
  }
  if (rank == 0) printf("]}\n");
  MPI_Finalize();
  return 0;
}
