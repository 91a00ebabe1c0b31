// Rasterisation maths shared by the CPU and CUDA kernels (and mirrored by
// jr2net.ops.reference.rasterize_ref), so every backend computes the same function.
//
// Conventions (DESIGN §3-§4): OpenCV camera, pixel (row i, col j) centred at (x=j, y=i),
// x = K00*X/Z + K01*Y/Z + K02, y = K10*X/Z + K11*Y/Z + K12 (the third row of K is taken as
// [0,0,1]). Output rast[b,i,j] = (u, v, z, face_id+1) with perspective-correct barycentrics
// u, v of vertices 0 and 1.
//
// Algorithm: project vertices (cov_t = double on CPU and CUDA); one pass over triangles tests
// pixel centres inside each triangle's bbox (watertight canonical edge functions, top-left tie
// rule, conservative per-row spans) and keeps the nearest with an atomic min on a packed
// (float32 depth bits << 32 | face id) key, so equal depths go to the lower face id; one pass
// over pixels resolves (u, v, z) in double. The backward (resolve_uvz_backward) differentiates
// the same resolve formula in the tensor's scalar type.
#pragma once

#include <cstdint>
#include <cstring>

#include "ops/common.h"

namespace jr2net::raster {

// Key of an empty pixel in the packed (depth bits << 32 | face id) z-buffer.
constexpr unsigned long long kEmptyKey = ~0ull;

// Plain parameter block of the forward pass; pointers are contiguous buffers.
template <typename scalar_t, typename cov_t>
struct RasterFwdParams {
  const scalar_t* verts;      // [B,V,3] camera-space vertices
  const int32_t* faces;       // [F,3]
  const scalar_t* K;          // [B,3,3]
  int B, V, F, H, W;
  bool cull_backfaces;
  double near_z;              // vertices with z <= near_z invalidate their triangles
  cov_t* proj;                // workspace [B,V,3]: projected x, y and 1/z (x NaN when invalid)
  unsigned long long* zbuf;   // workspace [B,H,W] packed depth keys
  scalar_t* rast;             // output [B,H,W,4]
};

// Parameter block of the backward pass (gradient w.r.t. the vertices from grad of u, v, z).
template <typename scalar_t>
struct RasterBwdParams {
  const scalar_t* verts;      // [B,V,3]
  const int32_t* faces;       // [F,3]
  const scalar_t* K;          // [B,3,3]
  const scalar_t* rast;       // [B,H,W,4] forward output (face ids in channel 3)
  const scalar_t* grad_rast;  // [B,H,W,4]
  int B, V, F, H, W;
  scalar_t* grad_verts;       // [B,V,3], accumulated into
};

JR2_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

template <typename T>
JR2_HD bool is_finite(T x) {
  return x - x == x - x;  // false for inf and NaN, without <cmath> on device
}

// Projects one camera-space vertex to (x, y, 1/z); marks it invalid (x = NaN) when it is
// behind the near plane or projects to a non-finite point.
template <typename cov_t, typename scalar_t>
JR2_HD void project_vertex(const scalar_t* X, const scalar_t* K, double near_z, cov_t* out) {
  const cov_t Xc = static_cast<cov_t>(X[0]);
  const cov_t Yc = static_cast<cov_t>(X[1]);
  const cov_t Zc = static_cast<cov_t>(X[2]);
  const cov_t xn = Xc / Zc;
  const cov_t yn = Yc / Zc;
  const cov_t x =
      static_cast<cov_t>(K[0]) * xn + static_cast<cov_t>(K[1]) * yn + static_cast<cov_t>(K[2]);
  const cov_t y =
      static_cast<cov_t>(K[3]) * xn + static_cast<cov_t>(K[4]) * yn + static_cast<cov_t>(K[5]);
  const bool ok = Zc > static_cast<cov_t>(near_z) && is_finite(x) && is_finite(y);
  out[0] = ok ? x : static_cast<cov_t>(0) / static_cast<cov_t>(0);
  out[1] = y;
  out[2] = cov_t(1) / Zc;
}

// Edge function of the directed edge a->b, E(p) = (bx-ax)(py-ay) - (by-ay)(px-ax), evaluated
// with the endpoints in a canonical (lexicographic) order, E = sgn * raw(lo->hi), so two
// triangles sharing an edge get exactly opposite values: rasterisation is watertight, and
// with the tie rule below a shared edge is drawn exactly once.
template <typename T>
struct Edge {
  T lx, ly, dx, dy;  // raw(p) = dx*(py-ly) - dy*(px-lx)
  T ss;              // s * sgn: inside means ss*raw > 0 (s = sign of the triangle's area)
  T inv_dy;          // 1/dy (row-span bounds only; prepare_spans fills it)
  bool tie;          // whether a pixel centre exactly on the edge (raw == 0) is inside
};

template <typename T>
JR2_HD Edge<T> make_edge(T ax, T ay, T bx, T by, T s) {
  Edge<T> e;
  const bool a_lo = (ax < bx) || (ax == bx && ay < by);
  e.lx = a_lo ? ax : bx;
  e.ly = a_lo ? ay : by;
  e.dx = a_lo ? bx - ax : ax - bx;
  e.dy = a_lo ? by - ay : ay - by;
  e.ss = a_lo ? s : -s;
  e.inv_dy = T(0);  // set by prepare_spans (only row_span reads it)
  // Top-left style rule on the inward normal n = s*(-(by-ay), bx-ax): the two triangles on
  // either side of an edge have opposite inward normals, so exactly one owns the tie.
  const T nx = -(by - ay) * s;
  const T ny = (bx - ax) * s;
  e.tie = ny > T(0) || (ny == T(0) && nx > T(0));
  return e;
}

template <typename T>
JR2_HD bool edge_inside(const Edge<T>& e, T raw) {
  return (e.ss * raw > T(0)) | ((raw == T(0)) & e.tie);
}

// ceil() of a positive value that fits an int.
template <typename T>
JR2_HD int ceil_pos(T x) {
  const int c = static_cast<int>(x);
  return static_cast<T>(c) < x ? c + 1 : c;
}

// Per-triangle setup for coverage and depth: edges, bbox, and depth coefficients c_k with
// 1/z = raw0*c0 + raw1*c1 + raw2*c2, c_k = sgn_k * (1/Z_k) * (1/A).
template <typename T>
struct TriSetup {
  Edge<T> e0, e1, e2;  // e_k is the edge opposite vertex k
  T c0, c1, c2;        // set by setup_depth
  T A, s;              // twice the signed screen area, and its sign
  int j0, j1, i0, i1;  // inclusive pixel bbox, clipped to the image
};

// The coverage half of the setup (edges and bbox; no division). p0, p1, p2 are projected
// vertices (x, y, 1/z). Returns false when the triangle draws nothing (vertex behind the near
// plane, degenerate, culled, or no pixel centre in its bbox).
template <typename T>
JR2_HD bool setup_coverage(const T* p0, const T* p1, const T* p2, int H, int W, bool cull,
                           TriSetup<T>& t) {
  const T x0 = p0[0], y0 = p0[1], x1 = p1[0], y1 = p1[1], x2 = p2[0], y2 = p2[1];
  if (!(x0 == x0) || !(x1 == x1) || !(x2 == x2)) return false;  // behind the near plane
  const T A = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0);
  if (!(A != T(0)) || !is_finite(A)) return false;  // degenerate
  // With y down, A < 0 means counter-clockwise on screen: front-facing.
  if (cull && A > T(0)) return false;
  const T xmin = x0 < x1 ? (x0 < x2 ? x0 : x2) : (x1 < x2 ? x1 : x2);
  const T xmax = x0 > x1 ? (x0 > x2 ? x0 : x2) : (x1 > x2 ? x1 : x2);
  const T ymin = y0 < y1 ? (y0 < y2 ? y0 : y2) : (y1 < y2 ? y1 : y2);
  const T ymax = y0 > y1 ? (y0 > y2 ? y0 : y2) : (y1 > y2 ? y1 : y2);
  if (xmax < T(0) || ymax < T(0) || xmin > T(W - 1) || ymin > T(H - 1)) return false;
  // Clamp in floating point before converting, so huge coordinates cannot overflow an int.
  t.j0 = xmin <= T(0) ? 0 : ceil_pos(xmin);
  t.j1 = xmax >= T(W - 1) ? W - 1 : static_cast<int>(xmax);  // floor of a value >= 0
  t.i0 = ymin <= T(0) ? 0 : ceil_pos(ymin);
  t.i1 = ymax >= T(H - 1) ? H - 1 : static_cast<int>(ymax);
  if (t.j0 > t.j1 || t.i0 > t.i1) return false;
  const T s = A > T(0) ? T(1) : T(-1);
  t.A = A;
  t.s = s;
  t.e0 = make_edge(x1, y1, x2, y2, s);
  t.e1 = make_edge(x2, y2, x0, y0, s);
  t.e2 = make_edge(x0, y0, x1, y1, s);
  return true;
}

// The depth half of the setup (the c_k above); needed only once a pixel is covered.
template <typename T>
JR2_HD void setup_depth(const T* p0, const T* p1, const T* p2, TriSetup<T>& t) {
  const T invA = T(1) / t.A;
  // (sgn*raw)*(iz*invA) == raw*(sgn*(iz*invA)) exactly, since sgn is +-1.
  t.c0 = (t.e0.ss * t.s) * (p0[2] * invA);
  t.c1 = (t.e1.ss * t.s) * (p1[2] * invA);
  t.c2 = (t.e2.ss * t.s) * (p2[2] * invA);
}

// The reciprocals row_span needs (it only narrows the columns a row tests: triangles a few
// pixels wide skip it, with the same result).
template <typename T>
JR2_HD void prepare_spans(TriSetup<T>& t) {
  t.e0.inv_dy = t.e0.dy != T(0) ? T(1) / t.e0.dy : T(0);
  t.e1.inv_dy = t.e1.dy != T(0) ? T(1) / t.e1.dy : T(0);
  t.e2.inv_dy = t.e2.dy != T(0) ? T(1) / t.e2.dy : T(0);
}

// The whole setup: coverage, row spans and depth.
template <typename T>
JR2_HD bool setup_triangle(const T* p0, const T* p1, const T* p2, int H, int W, bool cull,
                           TriSetup<T>& t) {
  if (!setup_coverage(p0, p1, p2, H, W, cull, t)) return false;
  prepare_spans(t);
  setup_depth(p0, p1, p2, t);
  return true;
}

// Row-invariant part dx*(py-ly) of each edge function.
template <typename T>
struct RowTerms {
  T r0, r1, r2;
};

template <typename T>
JR2_HD RowTerms<T> row_terms(const TriSetup<T>& t, T py) {
  return {t.e0.dx * (py - t.e0.ly), t.e1.dx * (py - t.e1.ly), t.e2.dx * (py - t.e2.ly)};
}

// Narrows the bbox columns [t.j0, t.j1] of a row to a conservative span [ja, jb] that contains
// every pixel the exact test (pixel_key) can accept: each edge function is linear along the row,
// so its zero crossing bounds the span; the bound is widened by far more than its rounding
// error, so pruning never changes the result. Returns false for an empty span.
template <typename T>
JR2_HD bool row_span(const TriSetup<T>& t, const RowTerms<T>& r, int& ja, int& jb) {
  T lo = static_cast<T>(t.j0), hi = static_cast<T>(t.j1);
  const Edge<T>* es[3] = {&t.e0, &t.e1, &t.e2};
  const T rs[3] = {r.r0, r.r1, r.r2};
  for (int k = 0; k < 3; ++k) {
    const Edge<T>& e = *es[k];
    // inside needs ss*raw >= 0 with raw(px) = r - dy*(px - lx)
    if (e.dy == T(0)) {
      if (e.ss * rs[k] < T(0)) return false;
      continue;
    }
    const T cross = e.lx + rs[k] * e.inv_dy;
    const T a = cross < T(0) ? -cross : cross;
    const T l = e.lx < T(0) ? -e.lx : e.lx;
    const T eps = T(1e-9) + T(1e-12) * (a + l + hi);
    if (e.ss * e.dy > T(0)) {
      const T c = cross + eps;  // px <= cross
      if (c < hi) hi = c;
    } else {
      const T c = cross - eps;  // px >= cross
      if (c > lo) lo = c;
    }
  }
  if (!(lo <= hi)) return false;
  ja = ceil_pos(lo);
  jb = static_cast<int>(hi);
  return ja <= jb;
}

// Edge functions raw_k of pixel centre (px, row) and whether the pixel is covered.
template <typename T>
JR2_HD bool pixel_edges(const TriSetup<T>& t, const RowTerms<T>& r, T px, T* E) {
  E[0] = r.r0 - t.e0.dy * (px - t.e0.lx);
  E[1] = r.r1 - t.e1.dy * (px - t.e1.lx);
  E[2] = r.r2 - t.e2.dy * (px - t.e2.lx);
  return edge_inside(t.e0, E[0]) & edge_inside(t.e1, E[1]) & edge_inside(t.e2, E[2]);
}

// Packed z-buffer key of a covered pixel with edge functions E (setup_depth done), or
// kEmptyKey when its depth is not positive and finite.
template <typename T>
JR2_HD unsigned long long depth_key(const TriSetup<T>& t, const T* E, int face) {
  const T q = E[0] * t.c0 + E[1] * t.c1 + E[2] * t.c2;
  const float z = static_cast<float>(T(1) / q);
  if (!(z > 0.0f) || !is_finite(z)) return kEmptyKey;
  return (static_cast<unsigned long long>(float_bits(z)) << 32) |
         static_cast<unsigned long long>(static_cast<uint32_t>(face));
}

// Packed z-buffer key of pixel (px, row) for triangle `face`, or kEmptyKey if not covered.
template <typename T>
JR2_HD unsigned long long pixel_key(const TriSetup<T>& t, const RowTerms<T>& r, T px, int face) {
  T E[3];
  if (!pixel_edges(t, r, px, E)) return kEmptyKey;
  return depth_key(t, E, face);
}

// Perspective-correct (u, v, z) at pixel centre (px, py) from projected vertices (x, y, 1/z):
// r_k = E_k / Z_k, S = sum r_k, u = r0/S, v = r1/S, z = (E0+E1+E2)/S (E_k: screen-space edge
// functions; the A of the barycentrics E_k/A cancels).
template <typename T>
JR2_HD void resolve_uvz_proj(const T* p0, const T* p1, const T* p2, T px, T py, T& u, T& v,
                             T& z) {
  const T x0 = p0[0], y0 = p0[1], x1 = p1[0], y1 = p1[1], x2 = p2[0], y2 = p2[1];
  const T E0 = (x2 - x1) * (py - y1) - (y2 - y1) * (px - x1);
  const T E1 = (x0 - x2) * (py - y2) - (y0 - y2) * (px - x2);
  const T E2 = (x1 - x0) * (py - y0) - (y1 - y0) * (px - x0);
  const T r0 = E0 * p0[2], r1 = E1 * p1[2], r2 = E2 * p2[2];
  const T invS = T(1) / (r0 + r1 + r2);
  u = r0 * invS;
  v = r1 * invS;
  z = (E0 + E1 + E2) * invS;
}

// Screen projection of a vertex in the tensor's precision (backward pass).
template <typename T>
JR2_HD void project_xy(const T* X, const T* K, T& x, T& y) {
  const T xn = X[0] / X[2];
  const T yn = X[1] / X[2];
  x = K[0] * xn + K[1] * yn + K[2];
  y = K[3] * xn + K[4] * yn + K[5];
}

// Adds d(loss)/d(vertex) of one pixel to g0, g1, g2 (each [3]) given grads gu, gv, gz of the
// resolve_uvz_proj formula, differentiated through the projection of camera-space X0, X1, X2.
template <typename T>
JR2_HD void resolve_uvz_backward(const T* X0, const T* X1, const T* X2, const T* K, T px, T py,
                                 T gu, T gv, T gz, T* g0, T* g1, T* g2) {
  T x0, y0, x1, y1, x2, y2;
  project_xy(X0, K, x0, y0);
  project_xy(X1, K, x1, y1);
  project_xy(X2, K, x2, y2);
  const T E0 = (x2 - x1) * (py - y1) - (y2 - y1) * (px - x1);
  const T E1 = (x0 - x2) * (py - y2) - (y0 - y2) * (px - x2);
  const T E2 = (x1 - x0) * (py - y0) - (y1 - y0) * (px - x0);
  const T Z0 = X0[2], Z1 = X1[2], Z2 = X2[2];
  const T r0 = E0 / Z0, r1 = E1 / Z1, r2 = E2 / Z2;
  const T S = r0 + r1 + r2;
  const T invS = T(1) / S;
  const T A = E0 + E1 + E2;
  const T u = r0 * invS, v = r1 * invS, z = A * invS;
  const T gS = -(gu * u + gv * v + gz * z) * invS;
  const T gr0 = gu * invS + gS, gr1 = gv * invS + gS, gr2 = gS;
  const T gA = gz * invS;
  const T gE0 = gr0 / Z0 + gA, gE1 = gr1 / Z1 + gA, gE2 = gr2 / Z2 + gA;
  T gZ0 = -gr0 * r0 / Z0, gZ1 = -gr1 * r1 / Z1, gZ2 = -gr2 * r2 / Z2;
  // E(a->b) = (bx-ax)(py-ay) - (by-ay)(px-ax):
  //   dE/dax = by-py, dE/day = px-bx, dE/dbx = py-ay, dE/dby = ax-px.
  T gx0 = 0, gy0 = 0, gx1 = 0, gy1 = 0, gx2 = 0, gy2 = 0;
  // E0: a = v1, b = v2
  gx1 += gE0 * (y2 - py); gy1 += gE0 * (px - x2); gx2 += gE0 * (py - y1); gy2 += gE0 * (x1 - px);
  // E1: a = v2, b = v0
  gx2 += gE1 * (y0 - py); gy2 += gE1 * (px - x0); gx0 += gE1 * (py - y2); gy0 += gE1 * (x2 - px);
  // E2: a = v0, b = v1
  gx0 += gE2 * (y1 - py); gy0 += gE2 * (px - x1); gx1 += gE2 * (py - y0); gy1 += gE2 * (x0 - px);
  // x = K00*X/Z + K01*Y/Z + K02, y = K10*X/Z + K11*Y/Z + K12
  const T* Xs[3] = {X0, X1, X2};
  T gx[3] = {gx0, gx1, gx2}, gy[3] = {gy0, gy1, gy2}, gZ[3] = {gZ0, gZ1, gZ2};
  T* gs[3] = {g0, g1, g2};
  for (int k = 0; k < 3; ++k) {
    const T invZ = T(1) / Xs[k][2];
    const T gxn = gx[k] * K[0] + gy[k] * K[3];
    const T gyn = gx[k] * K[1] + gy[k] * K[4];
    gs[k][0] += gxn * invZ;
    gs[k][1] += gyn * invZ;
    gs[k][2] += gZ[k] - (gxn * Xs[k][0] + gyn * Xs[k][1]) * invZ * invZ;
  }
}

// Vertex gradients g[k][:] (zeroed by the caller) of pixel (i, j) whose face has vertex ids fv,
// from grad_rast channels gr[0..2]; evaluated in double whatever the tensor type.
template <typename scalar_t>
JR2_HD void pixel_backward(const scalar_t* vb, const int32_t* fv, const scalar_t* K, int i, int j,
                           const scalar_t* gr, double g[3][3]) {
  double X[3][3], Kd[6];
  for (int k = 0; k < 3; ++k) {
    for (int c = 0; c < 3; ++c) X[k][c] = static_cast<double>(vb[static_cast<long long>(fv[k]) * 3 + c]);
  }
  for (int c = 0; c < 6; ++c) Kd[c] = static_cast<double>(K[c]);
  resolve_uvz_backward<double>(X[0], X[1], X[2], Kd, static_cast<double>(j),
                               static_cast<double>(i), static_cast<double>(gr[0]),
                               static_cast<double>(gr[1]), static_cast<double>(gr[2]), g[0], g[1],
                               g[2]);
}

}  // namespace jr2net::raster

#if defined(__CUDACC__) || defined(WITH_CUDA)
#include <cuda_runtime_api.h>

namespace jr2net::raster {

// CUDA launchers (csrc/cuda/rasterize.cu), instantiated for float and double. The caller
// provides zeroed grad_verts for the backward pass; the forward fills every workspace itself.
template <typename scalar_t>
void launch_rasterize_fwd(const RasterFwdParams<scalar_t, double>& p, cudaStream_t stream);
template <typename scalar_t>
void launch_rasterize_bwd(const RasterBwdParams<scalar_t>& p, cudaStream_t stream);

}  // namespace jr2net::raster
#endif
