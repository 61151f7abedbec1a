// Strided N-d iteration shared by the elementwise kernels (private to the kernel files).
#pragma once
#include <algorithm>
#include "megalith.h"

namespace mg {

constexpr int kMaxDims = kMaxDimsPublic;

// Up to 4 operands share one shape; strides are in elements (0 = broadcast).
struct StridedIter {
  int ndim = 0;
  int nops = 0;
  i64 shape[kMaxDims];
  i64 str[4][kMaxDims];

  StridedIter(int nops_, const i64* shp, int nd, const i64* const* strides) : nops(nops_) {
    // Drop size-1 dims, then merge neighbours that are contiguous for every operand.
    for (int d = 0; d < nd; d++) {
      if (shp[d] == 1) continue;
      shape[ndim] = shp[d];
      for (int o = 0; o < nops; o++) str[o][ndim] = strides[o][d];
      ndim++;
    }
    int w = 0;
    for (int d = 0; d < ndim; d++) {
      if (w > 0) {
        bool merge = true;
        for (int o = 0; o < nops; o++)
          if (str[o][w - 1] != str[o][d] * shape[d]) merge = false;
        if (merge) {
          shape[w - 1] *= shape[d];
          for (int o = 0; o < nops; o++) str[o][w - 1] = str[o][d];
          continue;
        }
      }
      shape[w] = shape[d];
      for (int o = 0; o < nops; o++) str[o][w] = str[o][d];
      w++;
    }
    ndim = w;
    if (ndim == 0) {  // a scalar
      ndim = 1;
      shape[0] = 1;
      for (int o = 0; o < nops; o++) str[o][0] = 0;
    }
  }

  i64 inner() const { return shape[ndim - 1]; }
  i64 outer() const {
    i64 n = 1;
    for (int d = 0; d < ndim - 1; d++) n *= shape[d];
    return n;
  }
  // Element offsets of operand o at the start of outer row r.
  void offsets(i64 r, i64* off) const {
    for (int o = 0; o < nops; o++) off[o] = 0;
    for (int d = ndim - 2; d >= 0; d--) {
      i64 idx = r % shape[d];
      r /= shape[d];
      for (int o = 0; o < nops; o++) off[o] += idx * str[o][d];
    }
  }
};

// Calls fn(off[], inner_strides[], n) for every outer row, rows split over the pool.
template <typename F>
void for_each_row(const StridedIter& it, F fn) {
  const i64 rows = it.outer(), inner = it.inner();
  const i64 grain = std::max<i64>(1, (1 << 15) / std::max<i64>(inner, 1));
  i64 istr[4];
  for (int o = 0; o < it.nops; o++) istr[o] = it.str[o][it.ndim - 1];
  if (rows == 1) {
    // One long row (everything contiguous after coalescing): split the row itself.
    parallel_for(inner, 1 << 15, [&](i64 lo, i64 hi) {
      i64 off[4];
      for (int o = 0; o < it.nops; o++) off[o] = lo * istr[o];
      fn(off, istr, hi - lo);
    });
    return;
  }
  parallel_for(rows, grain, [&](i64 lo, i64 hi) {
    i64 off[4];
    for (i64 r = lo; r < hi; r++) {
      it.offsets(r, off);
      fn(off, istr, inner);
    }
  });
}

}  // namespace mg
