//! Times burn 0.22.1's Adam and SGD-momentum steps and f32 matmul on burn's default wgpu device, at the sizes of
//! `optbench bench` / `optbench muon` and with their counting, so PERFORMANCE.md can put
//! wgpu-optim's numbers beside burn's from the same adapter.
//!
//! * Adam: a module of N flat 1-D `Param`s totalling E elements (split like optbench: the first
//!   E mod N tensors get one element more). Gradients are built untimed each step (loss =
//!   Σ (p·c).sum() with constant c, `backward()`, `GradientsParams::from_grads`), the device is
//!   synced, then `optimizer.step(lr, module, grads)` + a device sync is timed. GB/s counts
//!   Adam's 28 bytes per element (read p, g, m, v; write p, m, v: SPEC §5), decimal GB.
//! * SGD-momentum: the same module and timing with `SgdConfig` and torch's momentum 0.9,
//!   dampening 0, no Nesterov (burn's default dampening is 0.1); 20 bytes per element (read p,
//!   g, buf; write p, buf).
//! * Matmul: GFLOP/s at 2·m·n·k per product, on the three Newton–Schulz stages over a
//!   transformer's weight matrices (as `optbench muon`, in the orientation burn's own Muon uses:
//!   tall matrices transposed to wide) and on single products.
//!
//! Every timing is the wall time from before the first launch to the return of `Device::sync`,
//! median over `--iters` samples after `--warmup` untimed runs.

use std::time::Instant;

use burn::module::Param;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::{Device, Distribution, Tensor};
use serde::Serialize;

/// Adam's bytes per element and step (SPEC §5; optbench's `bytes_per_element` for Adam).
const ADAM_BYTES_PER_ELEMENT: u64 = 28;
/// SGD-momentum's bytes per element and step (SPEC §5).
const SGD_MOMENTUM_BYTES_PER_ELEMENT: u64 = 20;
/// The optimizers the harness times, by optbench's preset names.
const OPTIMIZERS: [&str; 2] = ["adam", "sgd-momentum"];
/// The largest tensor the harness makes, in f32 elements: lavapipe's storage-binding limit is
/// 128 MiB (LAVAPIPE-AND-WGPU30.md), and `optbench muon` also batches stages to one binding.
const MAX_TENSOR_ELEMS: usize = 32 << 20;
const MIB: u64 = 1 << 20;

#[derive(Clone, Debug)]
struct Opts {
    json: bool,
    sizes: Vec<u64>,
    tensors: Vec<u64>,
    iters: usize,
    warmup: usize,
    lr: f64,
    adam: bool,
    optimizers: Vec<String>,
    stages: bool,
    shapes: Vec<[usize; 3]>,
    layers: usize,
    width: usize,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            json: false,
            sizes: vec![MIB, 4 * MIB, 16 * MIB],
            tensors: vec![1, 1000],
            iters: 10,
            warmup: 3,
            lr: 1e-3,
            adam: true,
            optimizers: OPTIMIZERS.iter().map(|s| s.to_string()).collect(),
            stages: true,
            shapes: vec![[768, 768, 768], [768, 3072, 768], [3072, 768, 768]],
            layers: 12,
            width: 768,
        }
    }
}

const USAGE: &str = "\
burn-harness: burn 0.22.1's Adam step and f32 matmul on the default wgpu device

USAGE: cargo run --release -- [OPTIONS]

  --json                 print one JSON object instead of tables
  --sizes LIST           Adam total elements, e.g. 1M,4M,16M (M = 2^20; default 1M,4M,16M)
  --tensors LIST         Adam tensor counts (default 1,1000)
  --iters N              timed samples per case, median reported (default 10)
  --warmup N             untimed runs before timing (default 3)
  --lr X                 learning rate (default 1e-3)
  --optimizers LIST      adam, sgd-momentum (default both)
  --no-adam              skip the optimizer-step cases
  --no-stages            skip the Newton–Schulz stage cases
  --shapes LIST          single products MxKxN (default 768x768x768,768x3072x768,3072x768x768;
                         'none' for none)
  --layers N --width W   transformer of the stage cases (default 12 layers, width 768)
  -h, --help             this text
";

fn parse_count(s: &str) -> Result<u64, String> {
    let (num, mul) = match s.strip_suffix(['M', 'm']) {
        Some(n) => (n, MIB),
        None => match s.strip_suffix(['K', 'k']) {
            Some(n) => (n, 1 << 10),
            None => (s, 1),
        },
    };
    let n: u64 = num.parse().map_err(|_| format!("not a count: {s:?}"))?;
    match n.checked_mul(mul) {
        Some(0) | None => Err(format!("count must be positive and fit u64: {s:?}")),
        Some(v) => Ok(v),
    }
}

fn parse_list(s: &str) -> Result<Vec<u64>, String> {
    s.split(',').map(parse_count).collect()
}

fn parse_shape(s: &str) -> Result<[usize; 3], String> {
    let dims: Vec<usize> = s
        .split('x')
        .map(|d| {
            d.parse::<usize>()
                .map_err(|_| format!("not a shape MxKxN: {s:?}"))
        })
        .collect::<Result<_, _>>()?;
    match dims[..] {
        [m, k, n] if m > 0 && k > 0 && n > 0 => Ok([m, k, n]),
        _ => Err(format!("not a shape MxKxN of positive sizes: {s:?}")),
    }
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--json" => o.json = true,
            "--sizes" => o.sizes = parse_list(&val()?)?,
            "--tensors" => o.tensors = parse_list(&val()?)?,
            "--iters" => o.iters = parse_count(&val()?)? as usize,
            "--warmup" => o.warmup = val()?.parse().map_err(|_| "--warmup needs a count")?,
            "--lr" => o.lr = val()?.parse().map_err(|_| "--lr needs a number")?,
            "--no-adam" => o.adam = false,
            "--optimizers" => {
                o.optimizers = val()?.split(',').map(str::to_string).collect();
                if let Some(bad) = o.optimizers.iter().find(|x| !OPTIMIZERS.contains(&x.as_str())) {
                    return Err(format!("--optimizers: unknown {bad:?} (adam, sgd-momentum)"));
                }
            }
            "--no-stages" => o.stages = false,
            "--shapes" => {
                let v = val()?;
                o.shapes = if v == "none" {
                    Vec::new()
                } else {
                    v.split(',').map(parse_shape).collect::<Result<_, _>>()?
                };
            }
            "--layers" => o.layers = parse_count(&val()?)? as usize,
            "--width" => o.width = parse_count(&val()?)? as usize,
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {a:?}\n\n{USAGE}")),
        }
    }
    Ok(o)
}

#[derive(Serialize, Debug, Clone, Copy)]
struct Summary {
    median: f64,
    min: f64,
    max: f64,
    samples: usize,
}

impl Summary {
    fn of(ms: &[f64]) -> Self {
        let mut v = ms.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            0.5 * (v[n / 2 - 1] + v[n / 2])
        };
        Self {
            median,
            min: v[0],
            max: v[n - 1],
            samples: n,
        }
    }
}

#[derive(Serialize, Debug)]
struct AdamRow {
    /// `adam` or `sgd-momentum`.
    optimizer: String,
    elements: u64,
    tensors: u64,
    ms: Summary,
    /// bytes/element (28 for Adam, 20 for SGD-momentum) × elements / median step time,
    /// decimal GB.
    gb_per_s: f64,
}

#[derive(Serialize, Debug)]
struct MatmulRow {
    case: String,
    /// Batched products launched per sample (one `matmul` call each).
    launches: usize,
    /// Products (matrices) per sample.
    products: usize,
    gflop: f64,
    ms: Summary,
    gflops: f64,
}

#[derive(Serialize, Debug)]
struct Report {
    harness: &'static str,
    burn: &'static str,
    burn_features: Vec<&'static str>,
    adapter: String,
    timer: &'static str,
    iters: usize,
    warmup: usize,
    adam_config: String,
    adam_bytes_per_element: u64,
    adam: Vec<AdamRow>,
    stage_model: String,
    matmul: Vec<MatmulRow>,
}

fn sync(device: &Device) -> Result<(), String> {
    device
        .sync()
        .map_err(|e| format!("device sync failed: {e:?}"))
}

/// optbench's split of E elements over N tensors.
fn split(n: u64, t: u64) -> Vec<usize> {
    (0..t)
        .map(|i| (n / t + u64::from(i < n % t)) as usize)
        .collect()
}

fn uniform<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::<D>::random(shape, Distribution::Uniform(-0.5, 0.5), device)
}

/// `warmup` untimed steps, then `iters` timed ones, of `optim` on `module`; the ms of each.
fn time_steps(
    o: &Opts,
    device: &Device,
    mut module: Vec<Param<Tensor<1>>>,
    consts: &[Tensor<1>],
    mut optim: ModuleOptimizer,
) -> Result<Vec<f64>, String> {
    let mut ms = Vec::with_capacity(o.iters);
    for step in 0..o.warmup + o.iters {
        let loss = module
            .iter()
            .zip(consts)
            .map(|(p, c)| (p.val() * c.clone()).sum())
            .reduce(|a, b| a + b)
            .ok_or("no tensors")?;
        let grads = GradientsParams::from_grads(loss.backward(), &module);
        sync(device)?;
        let t0 = Instant::now();
        module = optim.step(o.lr, module, grads);
        sync(device)?;
        if step >= o.warmup {
            ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(ms)
}

/// One optimizer case (`adam` or `sgd-momentum`): `warmup` untimed steps, then `iters` timed
/// ones.
fn adam_case(o: &Opts, optimizer: &str, elements: u64, tensors: u64) -> Result<AdamRow, String> {
    if tensors > elements {
        return Err(format!("--tensors {tensors} exceeds --sizes {elements}"));
    }
    if elements > MAX_TENSOR_ELEMS as u64 {
        return Err(format!(
            "--sizes {elements}: more than {MAX_TENSOR_ELEMS} elements in one tensor"
        ));
    }
    let device = Device::default().autodiff();
    let lens = split(elements, tensors);
    let module: Vec<Param<Tensor<1>>> = lens
        .iter()
        .map(|&l| Param::from_tensor(uniform([l], &device)))
        .collect();
    // Constant (untracked) tensors: the gradient of Σ (p·c).sum() is c.
    let consts: Vec<Tensor<1>> = lens.iter().map(|&l| uniform([l], &device)).collect();
    let (ms, bytes) = match optimizer {
        "sgd-momentum" => {
            // torch.optim.SGD(momentum=0.9): dampening 0 (burn's default is 0.1).
            let momentum = MomentumConfig::new()
                .with_momentum(0.9)
                .with_dampening(0.0)
                .with_nesterov(false);
            let optim = SgdConfig::new().with_momentum(Some(momentum)).init();
            (
                time_steps(o, &device, module, &consts, optim)?,
                SGD_MOMENTUM_BYTES_PER_ELEMENT,
            )
        }
        _ => {
            let optim = AdamConfig::new().with_epsilon(1e-8).init();
            (
                time_steps(o, &device, module, &consts, optim)?,
                ADAM_BYTES_PER_ELEMENT,
            )
        }
    };
    let ms = Summary::of(&ms);
    Ok(AdamRow {
        optimizer: optimizer.to_string(),
        elements,
        tensors,
        gb_per_s: (bytes * elements) as f64 / (ms.median * 1e-3) / 1e9,
        ms,
    })
}

/// A batched product `a · b` (or `a · aᵀ` when `gram`) of `batch` matrices m×k · k×n.
#[derive(Clone, Copy, Debug)]
struct Product {
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    gram: bool,
}

impl Product {
    fn flops(&self) -> u64 {
        2 * (self.batch * self.m * self.n * self.k) as u64
    }

    /// Splits the batch so no operand or result exceeds one storage binding.
    fn chunks(self) -> Vec<Product> {
        let per = (self.m * self.k).max(self.k * self.n).max(self.m * self.n);
        let cap = (MAX_TENSOR_ELEMS / per).max(1);
        let parts = self.batch.div_ceil(cap);
        split(self.batch as u64, parts as u64)
            .into_iter()
            .map(|b| Product { batch: b, ..self })
            .collect()
    }
}

/// The three Newton–Schulz stages over the 2-D weights of `layers` blocks of width `w` (q, k, v,
/// o: w×w; fc1: 4w×w; fc2: w×4w), as burn's Muon orients them: a tall matrix is transposed to
/// wide first, so each matrix is r×c with r = min side. Stage 1: A = X·Xᵀ (r×c · c×r); stage 2:
/// A·A (r×r · r×r); stage 3: B·X (r×r · r×c). Same products and flops as `optbench muon`.
fn ns_stages(layers: usize, w: usize) -> Vec<(&'static str, Vec<Product>)> {
    let (sq, wide) = (4 * layers, 2 * layers);
    let p = |batch, m, k, n, gram| Product {
        batch,
        m,
        k,
        n,
        gram,
    };
    vec![
        (
            "NS X·Xᵀ",
            vec![p(sq, w, w, w, true), p(wide, w, 4 * w, w, true)],
        ),
        ("NS A·A", vec![p(sq + wide, w, w, w, false)]),
        (
            "NS B·X",
            vec![p(sq, w, w, w, false), p(wide, w, w, 4 * w, false)],
        ),
    ]
}

fn matmul_case(o: &Opts, name: String, products: &[Product]) -> Result<MatmulRow, String> {
    let device = Device::default();
    let chunks: Vec<Product> = products.iter().flat_map(|p| p.chunks()).collect();
    let operands: Vec<(Tensor<3>, Option<Tensor<3>>, Product)> = chunks
        .iter()
        .map(|&p| {
            let a = uniform([p.batch, p.m, p.k], &device);
            let b = (!p.gram).then(|| uniform([p.batch, p.k, p.n], &device));
            (a, b, p)
        })
        .collect();
    sync(&device)?;
    let mut ms = Vec::with_capacity(o.iters);
    for sample in 0..o.warmup + o.iters {
        let t0 = Instant::now();
        // Outputs stay alive until after the sync so no backend can drop the work as dead.
        let outs: Vec<Tensor<3>> = operands
            .iter()
            .map(|(a, b, _)| match b {
                // The transposed view, as burn's Muon writes X·Xᵀ.
                None => a.clone().matmul(a.clone().swap_dims(1, 2)),
                Some(b) => a.clone().matmul(b.clone()),
            })
            .collect();
        sync(&device)?;
        if sample >= o.warmup {
            ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        drop(outs);
    }
    let flops: u64 = chunks.iter().map(Product::flops).sum();
    let ms = Summary::of(&ms);
    Ok(MatmulRow {
        case: name,
        launches: chunks.len(),
        products: chunks.iter().map(|p| p.batch).sum(),
        gflop: flops as f64 * 1e-9,
        gflops: flops as f64 * 1e-9 / (ms.median * 1e-3),
        ms,
    })
}

fn features() -> Vec<&'static str> {
    let mut f = vec!["wgpu", "std", "autodiff", "optim"];
    if cfg!(feature = "fusion") {
        f.push("fusion");
    }
    if cfg!(feature = "autotune") {
        f.push("autotune");
    }
    f
}

fn fmt_count(n: u64) -> String {
    if n >= MIB && n % MIB == 0 {
        format!("{}M", n / MIB)
    } else {
        n.to_string()
    }
}

fn run(o: &Opts) -> Result<Report, String> {
    if o.iters == 0 {
        return Err("--iters must be at least 1".into());
    }
    let adapter = Device::default()
        .identity()
        .map(|id| id.name)
        .unwrap_or_else(|| "default wgpu device (burn reports no name)".into());
    let mut report = Report {
        harness: "burn-harness (wgpu-optim)",
        burn: "0.22.1",
        burn_features: features(),
        adapter,
        timer: "host wall clock around the launches and Device::sync",
        iters: o.iters,
        warmup: o.warmup,
        adam_config: format!(
            "burn AdamConfig::new().with_epsilon(1e-8) (beta 0.9, 0.999; no weight decay), lr {}",
            o.lr
        ),
        adam_bytes_per_element: ADAM_BYTES_PER_ELEMENT,
        adam: Vec::new(),
        stage_model: format!(
            "{} layers of width {}: {} matrices ({}x{}, {}x{}, {}x{})",
            o.layers,
            o.width,
            6 * o.layers,
            o.width,
            o.width,
            4 * o.width,
            o.width,
            o.width,
            4 * o.width
        ),
        matmul: Vec::new(),
    };
    if o.adam {
        for &e in &o.sizes {
            for opt in &o.optimizers {
                for &t in &o.tensors {
                    if !o.json {
                        eprintln!("{opt} {} x {t} ...", fmt_count(e));
                    }
                    report.adam.push(adam_case(o, opt, e, t)?);
                }
            }
        }
    }
    if o.stages {
        for (name, products) in ns_stages(o.layers, o.width) {
            if !o.json {
                eprintln!("{name} ...");
            }
            report
                .matmul
                .push(matmul_case(o, name.to_string(), &products)?);
        }
    }
    for &[m, k, n] in &o.shapes {
        let name = format!("{m}x{k} · {k}x{n}");
        if !o.json {
            eprintln!("{name} ...");
        }
        let p = Product {
            batch: 1,
            m,
            k,
            n,
            gram: false,
        };
        report.matmul.push(matmul_case(o, name, &[p])?);
    }
    Ok(report)
}

fn print_table(r: &Report) {
    println!(
        "burn {} [{}] on {} (timer: {}; median of {} after {} warm-up)",
        r.burn,
        r.burn_features.join(", "),
        r.adapter,
        r.timer,
        r.iters,
        r.warmup
    );
    if !r.adam.is_empty() {
        println!(
            "\noptimizer step: {}; SGD-momentum: momentum 0.9, dampening 0; GB/s at {} \
             B/element (Adam), 20 (SGD-momentum)",
            r.adam_config, r.adam_bytes_per_element
        );
        println!(
            "{:<13} {:>10} {:>8} {:>12} {:>10} {:>10} {:>10}",
            "optimizer", "elements", "tensors", "median ms", "min ms", "max ms", "GB/s"
        );
        for a in &r.adam {
            println!(
                "{:<13} {:>10} {:>8} {:>12.3} {:>10.3} {:>10.3} {:>10.3}",
                a.optimizer,
                fmt_count(a.elements),
                a.tensors,
                a.ms.median,
                a.ms.min,
                a.ms.max,
                a.gb_per_s
            );
        }
    }
    if !r.matmul.is_empty() {
        println!(
            "\nf32 matmul (GFLOP = 2·m·n·k per product; stages over {})",
            r.stage_model
        );
        println!(
            "{:<22} {:>8} {:>8} {:>10} {:>12} {:>10}",
            "case", "launches", "products", "GFLOP", "median ms", "GFLOP/s"
        );
        for m in &r.matmul {
            println!(
                "{:<22} {:>8} {:>8} {:>10.4} {:>12.3} {:>10.2}",
                m.case, m.launches, m.products, m.gflop, m.ms.median, m.gflops
            );
        }
    }
}

fn main() {
    let result = parse_args().and_then(|o| run(&o).map(|r| (o, r)));
    match result {
        Ok((o, r)) if o.json => match serde_json::to_string_pretty(&r) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        },
        Ok((_, r)) => print_table(&r),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_matches_optbench() {
        let v = split(10, 3);
        assert_eq!(v, vec![4, 3, 3]);
        assert_eq!(split(1 << 20, 1000).iter().sum::<usize>(), 1 << 20);
    }

    #[test]
    fn stage_flops_match_optbench_muon() {
        // optbench muon, 12 x 768: per stage 48 square w^3 products and 24 of w*w*4w (stages 1
        // and 3), 72 of w^3 (stage 2); 2 flops per multiply-add.
        let w = 768u64;
        let want = [
            2 * (48 * w * w * w + 24 * w * w * 4 * w),
            2 * 72 * w * w * w,
            2 * (48 * w * w * w + 24 * w * w * 4 * w),
        ];
        for ((_, ps), want) in ns_stages(12, 768).iter().zip(want) {
            let chunks: Vec<Product> = ps.iter().flat_map(|p| p.chunks()).collect();
            assert_eq!(chunks.iter().map(Product::flops).sum::<u64>(), want);
            for c in &chunks {
                assert!(c.batch * (c.m * c.k).max(c.k * c.n).max(c.m * c.n) <= MAX_TENSOR_ELEMS);
            }
        }
    }

    #[test]
    fn counts_parse() {
        assert_eq!(
            parse_list("1M,4m,16M,1000").unwrap(),
            vec![MIB, 4 * MIB, 16 * MIB, 1000]
        );
        assert!(parse_count("0").is_err());
        assert!(parse_shape("768x3072x768").is_ok());
        assert!(parse_shape("768x3072").is_err());
    }
}
