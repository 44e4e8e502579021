// matmul.wgsl: a batched, tiled f32 matrix multiply over one flat buffer, for the Newton–Schulz
// iteration of Muon (X·Xᵀ, c·A·A + b·A, B·X + a·X) on every weight matrix of a model at once.
//
// Each problem p of a stage computes, on row-major matrices that live in `data`,
//     C = alpha · op(A) · op(B)            (no D)
//     C = alpha · op(A) · op(B) + beta · D (MM_HAS_D)
// with op(A) m×k (stored k×m when MM_TRANS_A), op(B) k×n (stored n×k when MM_TRANS_B), C and D
// m×n. The host (src/matmul.rs, `BatchedMatmul`) checks that every region lies inside the
// binding and that no problem writes where any problem of the stage reads or writes (D may be
// C itself, element for element), so the problems of a stage are independent and run in one
// dispatch: the multi-tensor idea applied to matmul, so 100 weight matrices cost one launch.
//
// Work split: one workgroup per 32×32 output tile, found in the tile table (problem, first row,
// first column), so problems of any shape, tiny or far from square, share one grid without
// wasting workgroups on each other's padding. 16×16 invocations each own a 2×2 micro-tile
// (rows ly and ly+16, columns lx and lx+16). K is walked in 32-wide slices staged in workgroup
// memory; elements past m, n or k are staged as 0, so padding adds +0 to the accumulators,
// which leaves them bit for bit unchanged (the accumulator starts at +0, and +0 + -0 = +0).
//
// Summation order (what the CPU twin `matmul_cpu` repeats): each output element has one f32
// accumulator, acc = 0; acc = acc + a_l * b_l for l = 0, 1, ..., k-1 in that order; then
// out = alpha * acc, and out = out + beta * d with MM_HAS_D. No two invocations share an
// output, nothing is reduced across invocations, and there are no atomics, so a rerun gives
// the same bits. (A compiler that contracts a*b + c into an fma changes the last bits against
// the CPU twin; lavapipe does not. src/matmul.rs states the bound.)
//
// Grids wider than 65535 workgroups spill into y; the linear workgroup id is x + y * width,
// and ids past the tile table are skipped (a whole workgroup, so the barriers stay uniform).
//
// Bindings (group 0), mirrored by src/shaders.rs (LayoutKind::Matmul):
//   0  storage, read       problems  MatmulProblem per problem of the stage
//   1  storage, read       tiles     per output tile: (problem, first row, first column, 0)
//   2  storage, read_write data      the flat f32 buffer every problem's A, B, C, D lives in

const MM_TILE: u32 = 32u;
const MM_BK: u32 = 32u;

const MM_TRANS_A: u32 = 1u;
const MM_TRANS_B: u32 = 2u;
const MM_HAS_D: u32 = 4u;

// 48 bytes; the Rust twin is `GpuProblem` in src/matmul.rs.
struct MatmulProblem {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,
    a_off: u32,
    b_off: u32,
    c_off: u32,
    d_off: u32,
    alpha: f32,
    beta: f32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<storage, read> problems: array<MatmulProblem>;
@group(0) @binding(1) var<storage, read> tiles: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> data: array<f32>;

// One K slice of op(A), as [kk][row], and of op(B), as [kk][column].
var<workgroup> a_tile: array<f32, 1024>;
var<workgroup> b_tile: array<f32, 1024>;

@compute @workgroup_size(16, 16)
fn matmul_tiles(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let t = wid.x + wid.y * nwg.x;
    if (t >= arrayLength(&tiles)) {
        return;
    }
    let tile = tiles[t];
    let p = problems[tile.x];
    let row0 = tile.y;
    let col0 = tile.z;
    let trans_a = (p.flags & MM_TRANS_A) != 0u;
    let trans_b = (p.flags & MM_TRANS_B) != 0u;
    let li = lid.y * 16u + lid.x;

    var acc00 = 0.0;
    var acc01 = 0.0;
    var acc10 = 0.0;
    var acc11 = 0.0;
    let slices = (p.k + MM_BK - 1u) / MM_BK;
    for (var s = 0u; s < slices; s = s + 1u) {
        let k0 = s * MM_BK;
        // Stage the slice; neighbouring invocations read neighbouring addresses of whichever
        // orientation the operand is stored in.
        for (var e = li; e < MM_TILE * MM_BK; e = e + 256u) {
            var kk: u32;
            var r: u32;
            if (trans_a) {
                kk = e / MM_TILE;
                r = e % MM_TILE;
            } else {
                r = e / MM_BK;
                kk = e % MM_BK;
            }
            let i = row0 + r;
            let l = k0 + kk;
            var av = 0.0;
            if (i < p.m && l < p.k) {
                if (trans_a) {
                    av = data[p.a_off + l * p.m + i];
                } else {
                    av = data[p.a_off + i * p.k + l];
                }
            }
            a_tile[kk * MM_TILE + r] = av;

            var c: u32;
            if (trans_b) {
                c = e / MM_BK;
                kk = e % MM_BK;
            } else {
                kk = e / MM_TILE;
                c = e % MM_TILE;
            }
            let j = col0 + c;
            let lb = k0 + kk;
            var bv = 0.0;
            if (j < p.n && lb < p.k) {
                if (trans_b) {
                    bv = data[p.b_off + j * p.k + lb];
                } else {
                    bv = data[p.b_off + lb * p.n + j];
                }
            }
            b_tile[kk * MM_TILE + c] = bv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < MM_BK; kk = kk + 1u) {
            let a0 = a_tile[kk * MM_TILE + lid.y];
            let a1 = a_tile[kk * MM_TILE + lid.y + 16u];
            let b0 = b_tile[kk * MM_TILE + lid.x];
            let b1 = b_tile[kk * MM_TILE + lid.x + 16u];
            acc00 = acc00 + a0 * b0;
            acc01 = acc01 + a0 * b1;
            acc10 = acc10 + a1 * b0;
            acc11 = acc11 + a1 * b1;
        }
        // The next slice overwrites the tiles.
        workgroupBarrier();
    }

    let has_d = (p.flags & MM_HAS_D) != 0u;
    store(p, row0 + lid.y, col0 + lid.x, acc00, has_d);
    store(p, row0 + lid.y, col0 + lid.x + 16u, acc01, has_d);
    store(p, row0 + lid.y + 16u, col0 + lid.x, acc10, has_d);
    store(p, row0 + lid.y + 16u, col0 + lid.x + 16u, acc11, has_d);
}

// C[i, j] = alpha * acc (+ beta * D[i, j]); nothing outside the m×n output.
fn store(p: MatmulProblem, i: u32, j: u32, acc: f32, has_d: bool) {
    if (i >= p.m || j >= p.n) {
        return;
    }
    var out = p.alpha * acc;
    if (has_d) {
        out = out + p.beta * data[p.d_off + i * p.n + j];
    }
    data[p.c_off + i * p.n + j] = out;
}
