// Variant of attention.cu's tensor-core backward, measured and not kept (dev/cuda/README.md): dk/dv and dq
// as two kernels, each recomputing the probabilities and dP, so that nothing is accumulated with atomics.
// attention_backward_rowdot (with dq_acc null) runs first, as for the mainline kernel.
#include "attention.cu"

#if LLMNP_BF16 && HS % 16 == 0 && HS <= 128
// dk, dv: grid (ceil(T/64), B*NH), 128 threads; block kt owns keys kt*64.., its warps 16 keys each
// (k and v as register fragments), and walks the query tiles from the diagonal to the end (block 0,
// the longest, starts first). Shared: four tiles, K | V at first, then Q | dO double-buffered.
extern "C" __global__ void __launch_bounds__(128) attention_backward_dkdv_mma(floatX* dqkv, const floatX* dout,
                                                                           const floatX* qkv, const float* lse,
                                                                           const float* D, int B, int T, int NH) {
    floatX* tiles = smem16;                                       // 4 tiles: [2 cur]: Q, [2 cur + 1]: dO
    float* ls = reinterpret_cast<float*>(AT(tiles, 4));           // [2][TILE]
    float* Ds = ls + 2 * TILE;                                    // [2][TILE]
    const int C = NH * HS, C3 = 3 * C;
    const int kt = blockIdx.x;
    const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tig = lane % 4;
    const floatX* q = qkv + (long long)b * T * C3 + h * HS;
    const floatX* dO = dout + (long long)b * T * C + h * HS;
    const float* lse_bh = lse + (long long)bh * T;
    const float* D_bh = D + (long long)bh * T;
    load_tile(AT(tiles, 2), q + C, kt * TILE, T, C3);                 // K, V into the second pair for now
    load_tile(AT(tiles, 3), q + 2 * C, kt * TILE, T, C3);
    load_tile(AT(tiles, 0), q, kt * TILE, T, C3);                     // the first query tile (the diagonal)
    load_tile(AT(tiles, 1), dO, kt * TILE, T, C);
    load_stat(ls, lse_bh, kt * TILE, T);
    load_stat(Ds, D_bh, kt * TILE, T);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    unsigned kf[HS / 16][4], vf[HS / 16][4];
    for (int kk = 0; kk < HS / 16; kk++) {
        ldsm_a(kf[kk], AT(tiles, 2), warp * 16, kk * 16);
        ldsm_a(vf[kk], AT(tiles, 3), warp * 16, kk * 16);
    }
    __syncthreads();                                              // tiles 2, 3 are free for queries now
    const int j0 = kt * TILE + warp * 16 + g, j1 = j0 + 8;       // this thread's two keys
    const float sl2 = LOG2E / sqrtf((float)HS);
    float dk[HS / 8][4], dv[HS / 8][4];
    for (int n = 0; n < HS / 8; n++)
        for (int e = 0; e < 4; e++) dk[n][e] = dv[n][e] = 0.0f;
    const int ntiles = (T + TILE - 1) / TILE;
    for (int qt = kt; qt < ntiles; qt++) {
        const int cur = (qt - kt) & 1;
        if (qt + 1 < ntiles) {
            load_tile(AT(tiles, 2 * (cur ^ 1)), q, (qt + 1) * TILE, T, C3);
            load_tile(AT(tiles, 2 * (cur ^ 1) + 1), dO, (qt + 1) * TILE, T, C);
            load_stat((ls + (cur ^ 1) * TILE), lse_bh, (qt + 1) * TILE, T);
            load_stat((Ds + (cur ^ 1) * TILE), D_bh, (qt + 1) * TILE, T);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const floatX* qs = AT(tiles, 2 * cur);
        const floatX* dos = AT(tiles, 2 * cur + 1);
        float st[TILE / 8][4], dpt[TILE / 8][4];        // S^T and dP^T: rows keys, columns queries
        for (int n = 0; n < TILE / 8; n++)
            for (int e = 0; e < 4; e++) st[n][e] = dpt[n][e] = 0.0f;
        for (int kk = 0; kk < HS / 16; kk++)
            for (int n2 = 0; n2 < TILE / 16; n2++) {
                unsigned qb[4], db[4];
                ldsm_b(qb, qs, n2 * 16, kk * 16);
                mma16816(st[2 * n2], kf[kk], qb[0], qb[1]);
                mma16816(st[2 * n2 + 1], kf[kk], qb[2], qb[3]);
                ldsm_b(db, dos, n2 * 16, kk * 16);
                mma16816(dpt[2 * n2], vf[kk], db[0], db[1]);
                mma16816(dpt[2 * n2 + 1], vf[kk], db[2], db[3]);
            }
        const bool edge = qt == kt || (qt + 1) * TILE > T;
        for (int n = 0; n < TILE / 8; n++)
            for (int e = 0; e < 4; e++) {
                const int il = n * 8 + 2 * tig + (e & 1), i = qt * TILE + il;
                const int j = e < 2 ? j0 : j1;
                const bool visible = !edge || (i >= j && i < T && j < T);
                const float p = visible ? exp2_ftz(fmaf(st[n][e], sl2, -ls[cur * TILE + il] * LOG2E)) : 0.0f;
                st[n][e] = p;
                dpt[n][e] = p * (dpt[n][e] - Ds[cur * TILE + il]);
            }
        for (int kk = 0; kk < TILE / 16; kk++) {
            unsigned pa[4], da[4];
            acc_to_a(pa, st[2 * kk], st[2 * kk + 1]);
            acc_to_a(da, dpt[2 * kk], dpt[2 * kk + 1]);
            for (int n2 = 0; n2 < HS / 16; n2++) {
                unsigned ob[4], qb[4];
                ldsm_bt(ob, dos, kk * 16, n2 * 16);
                mma16816(dv[2 * n2], pa, ob[0], ob[1]);
                mma16816(dv[2 * n2 + 1], pa, ob[2], ob[3]);
                ldsm_bt(qb, qs, kk * 16, n2 * 16);
                mma16816(dk[2 * n2], da, qb[0], qb[1]);
                mma16816(dk[2 * n2 + 1], da, qb[2], qb[3]);
            }
        }
        __syncthreads();
    }
    store_dkdv(dqkv, nullptr, dk, dv, b, h, NH, j0, T);
}

// dq: grid (ceil(T/64), B*NH), 128 threads; block owns 64 queries (16 per warp; q and dout as register
// fragments) and walks the key tiles up to the diagonal (longest first). Shared: four tiles, Q | dO at
// first, then K | V double-buffered.
extern "C" __global__ void __launch_bounds__(128) attention_backward_dq_mma(floatX* dqkv, const floatX* dout,
                                                                           const floatX* qkv, const float* lse,
                                                                           const float* D, int B, int T, int NH) {
    floatX* tiles = smem16;                                       // 4 tiles: [2 cur]: K, [2 cur + 1]: V
    const int C = NH * HS, C3 = 3 * C;
    const int qt = gridDim.x - 1 - blockIdx.x;
    const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tig = lane % 4;
    const floatX* q = qkv + (long long)b * T * C3 + h * HS;
    const floatX* dO = dout + (long long)b * T * C + h * HS;
    load_tile(AT(tiles, 2), q, qt * TILE, T, C3);                     // Q, dO into the second pair for now
    load_tile(AT(tiles, 3), dO, qt * TILE, T, C);
    load_tile(AT(tiles, 0), q + C, 0, T, C3);                         // the first key tile
    load_tile(AT(tiles, 1), q + 2 * C, 0, T, C3);
    cp_async_commit();
    const int r0 = qt * TILE + warp * 16 + g, r1 = r0 + 8;
    const float lse0 = r0 < T ? lse[(long long)bh * T + r0] * LOG2E : 0.0f;
    const float lse1 = r1 < T ? lse[(long long)bh * T + r1] * LOG2E : 0.0f;
    const float D0 = r0 < T ? D[(long long)bh * T + r0] : 0.0f;
    const float D1 = r1 < T ? D[(long long)bh * T + r1] : 0.0f;
    cp_async_wait<0>();
    __syncthreads();
    unsigned qf[HS / 16][4], df[HS / 16][4];
    for (int kk = 0; kk < HS / 16; kk++) {
        ldsm_a(qf[kk], AT(tiles, 2), warp * 16, kk * 16);
        ldsm_a(df[kk], AT(tiles, 3), warp * 16, kk * 16);
    }
    __syncthreads();                                              // tiles 2, 3 are free for keys now
    const float sl2 = LOG2E / sqrtf((float)HS);
    float dq[HS / 8][4];
    for (int n = 0; n < HS / 8; n++) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;
    for (int kt = 0; kt <= qt; kt++) {
        const int cur = kt & 1;
        if (kt < qt) {
            load_tile(AT(tiles, 2 * (cur ^ 1)), q + C, (kt + 1) * TILE, T, C3);
            load_tile(AT(tiles, 2 * (cur ^ 1) + 1), q + 2 * C, (kt + 1) * TILE, T, C3);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const floatX* ks = AT(tiles, 2 * cur);
        const floatX* vs = AT(tiles, 2 * cur + 1);
        float s[TILE / 8][4], dp[TILE / 8][4];
        for (int n = 0; n < TILE / 8; n++)
            for (int e = 0; e < 4; e++) s[n][e] = dp[n][e] = 0.0f;
        for (int kk = 0; kk < HS / 16; kk++)
            for (int n2 = 0; n2 < TILE / 16; n2++) {
                unsigned kb[4], vb[4];
                ldsm_b(kb, ks, n2 * 16, kk * 16);
                mma16816(s[2 * n2], qf[kk], kb[0], kb[1]);
                mma16816(s[2 * n2 + 1], qf[kk], kb[2], kb[3]);
                ldsm_b(vb, vs, n2 * 16, kk * 16);
                mma16816(dp[2 * n2], df[kk], vb[0], vb[1]);
                mma16816(dp[2 * n2 + 1], df[kk], vb[2], vb[3]);
            }
        const bool edge = kt == qt || (kt + 1) * TILE > T;
        for (int n = 0; n < TILE / 8; n++)
            for (int e = 0; e < 4; e++) {
                const int key = kt * TILE + n * 8 + 2 * tig + (e & 1);
                const int row = e < 2 ? r0 : r1;
                const bool visible = !edge || (key <= row && key < T && row < T);
                const float p = visible ? exp2_ftz(fmaf(s[n][e], sl2, -(e < 2 ? lse0 : lse1))) : 0.0f;
                s[n][e] = p * (dp[n][e] - (e < 2 ? D0 : D1));          // dS (unscaled)
            }
        for (int kk = 0; kk < TILE / 16; kk++) {
            unsigned da[4];
            acc_to_a(da, s[2 * kk], s[2 * kk + 1]);
            for (int n2 = 0; n2 < HS / 16; n2++) {
                unsigned kb[4];
                ldsm_bt(kb, ks, kk * 16, n2 * 16);
                mma16816(dq[2 * n2], da, kb[0], kb[1]);
                mma16816(dq[2 * n2 + 1], da, kb[2], kb[3]);
            }
        }
        __syncthreads();
    }
    const float scale = 1.0f / sqrtf((float)HS);
    for (int n = 0; n < HS / 8; n++) {
        const int col = h * HS + n * 8 + 2 * tig;
        if (r0 < T) *reinterpret_cast<__nv_bfloat162*>(dqkv + ((long long)b * T + r0) * C3 + col) = __floats2bfloat162_rn(dq[n][0] * scale, dq[n][1] * scale);
        if (r1 < T) *reinterpret_cast<__nv_bfloat162*>(dqkv + ((long long)b * T + r1) * C3 + col) = __floats2bfloat162_rn(dq[n][2] * scale, dq[n][3] * scale);
    }
}
#endif
