// hd.wgsl: what the hypergradient families share (sgd_hd.wgsl, adam_hd.wgsl): the per-chunk
// dot <g, d_prev>, the per-group fold and lr update, and the decay helper. Each family file
// keeps its bindings, its direction and update, and thin entry points that call `hd_dot` and
// `hd_lr` (entry names stay per family: kernel identity and the pipeline cache key on them).
// Composed as common.wgsl, reduce.wgsl, this file, then the family file
// (`kernel_source!(reduce "hd.wgsl" + ...)`). WGSL module-scope declarations may come in any
// order, so this file uses the family's declarations: `hypers` (a struct with flags,
// weight_decay, lr and hypergrad_lr per group, aliased as ChunkArgs), `tensors` (live, group)
// and `prev_direction`.
// Mirrors src/optim/hd.rs (chunk_partials, group_update).

const HD_GLOBAL: u32 = 1024u;
const HD_RESET: u32 = 2048u;

// L2 decay added to the gradient (the reference code adds it before the dot; coupled, as
// torch 1.x Adam, for Adam-HD).
fn with_decay(g: vec4<f32>, p: vec4<f32>, wd: f32) -> vec4<f32> {
    if (wd != 0.0) {
        return g + wd * p;
    }
    return g;
}

// hd_dot's virtual lanes (reduce.wgsl's fold_chunk_lanes): sums, with the group's
// hyperparameters (the family file's ChunkArgs).
alias LaneAcc = vec4<f32>;

// <g, d_prev> over vec4 v, folded into acc.x.
fn reduce_vec(acc: LaneAcc, hp: ChunkArgs, c: ChunkRef, v: u32) -> LaneAcc {
    let i = c.base + v;
    let g = with_decay(load_grad(i, hp.flags), params[i], hp.weight_decay);
    let dot = lane_dot(g, prev_direction[c.sbase + v], lane_mask(c.len, v));
    return red_combine(acc, vec4<f32>(dot, 0.0, 0.0, 0.0));
}

fn set_lane(l: u32, acc: LaneAcc) {
    set_lane_partial(l, acc);
}

// Per chunk (WG_SIZE invocations): partial sums of <g, d_prev>, g = grad + wd * p; 0 for a
// frozen tensor.
fn hd_dot(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) {
    let c = chunk_for(wid, nwg);
    if (!c.ok) {
        return;
    }
    let chunk = win.chunk_base + group_index(wid, nwg);
    let t = tensors[c.tensor];
    if (t.live == 0u) {
        // A frozen tensor contributes nothing to the hypergradient.
        if (lid == 0u) {
            partials[chunk] = vec4<f32>(0.0);
        }
        return;
    }
    // The hyperparameters of the tensor's parameter group, loaded once per workgroup.
    fold_chunk_lanes(c, hypers[c.group], lid);
    store_chunk_partial(chunk, lid, c.len);
}

// Per group (RED_SIZE invocations): h = the group's (HD_GLOBAL: the segment's) dots folded in
// a fixed order; lr = (HD_RESET ? configured lr : learned lr) + hypergrad_lr * h, stored with
// h in the group's learned slot.
fn hd_lr(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) {
    let gi = group_index(wid, nwg);
    let hp = hypers[gi];
    let h = fold_group_chunks(gi, (hp.flags & HD_GLOBAL) != 0u, lid).x;
    if (lid == 0u) {
        let slot = learned_slot(gi);
        var alpha = partials[slot].x;
        if ((hp.flags & HD_RESET) != 0u) {
            alpha = hp.lr;
        }
        partials[slot] = vec4<f32>(alpha + hp.hypergrad_lr * h, h, 0.0, 0.0);
    }
}
