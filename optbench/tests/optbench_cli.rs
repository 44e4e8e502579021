//! The `optbench` binary end to end: verify passes, an injected fault fails with a non-zero
//! exit, `bench --json` and `info --json` parse back with the expected fields, and `--plot`
//! writes PNG and SVG files. These need an adapter: they print SKIP without one unless
//! REQUIRE_GPU=1. No wall-clock thresholds: numbers are only checked to be positive.

// The library's test helpers (REQUIRE_GPU handling, seeded data), shared rather than copied.
#[path = "../../tests/common/mod.rs"]
mod common;

use std::process::{Command, Output};

use serde_json::Value;

fn optbench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_optbench"))
        .args(args)
        // Shapes timed here (on a machine busy with other tests) never reach the user's cache.
        .env(
            "WGPU_OPTIM_CACHE_DIR",
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("kernel-shapes"),
        )
        .output()
        .expect("optbench runs")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn have_gpu() -> bool {
    common::gpu().is_some()
}

fn positive(v: &Value, what: &str) -> f64 {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x > 0.0 && x.is_finite(), "{what} = {x}");
    x
}

/// Tiny sizes, so the whole run takes seconds.
const QUICK_BENCH: [&str; 12] = [
    "bench",
    "--quick",
    "--json",
    "--sizes",
    "4096,100003",
    "--tensors",
    "1,10",
    "--iters",
    "3",
    "--warmup",
    "1",
    "--optimizers=adam,sgd-momentum",
];

#[test]
fn verify_passes_on_the_gpu() {
    if !have_gpu() {
        return;
    }
    let o = optbench(&["verify"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "exit {:?}\n{out}\n{err}", o.status);
    assert!(out.contains("PASS"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
    // A passing run is quiet: nothing on stderr reads as an error (the Vulkan loader's layers
    // printed "error: XDG_RUNTIME_DIR is invalid" before .cargo/config.toml set NODEVICE_SELECT).
    for line in err.lines() {
        assert!(
            !line.trim_start().to_ascii_lowercase().starts_with("error"),
            "an error line on stderr of a passing run: {line}\n{err}"
        );
    }
    // One line per optimizer variant by default, naming the worst buffer.
    for name in [
        "adam",
        "adamw",
        "sgd",
        "rmsprop",
        "adagrad",
        "buffers (worst:",
    ] {
        assert!(out.contains(name), "{name} missing from\n{out}");
    }
    assert!(
        !out.contains("exp_avg_sq  "),
        "per-buffer rows without --verbose\n{out}"
    );
    // --verbose: one row per buffer.
    let o = optbench(&["verify", "--verbose", "--optimizers", "adam,adagrad"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "exit {:?}\n{out}\n{err}", o.status);
    for name in ["exp_avg_sq", "sum", "param"] {
        assert!(out.contains(name), "{name} missing from\n{out}");
    }
}

#[test]
fn verify_with_an_injected_fault_fails() {
    if !have_gpu() {
        return;
    }
    let o = optbench(&["verify", "--inject-fault", "--optimizers", "adam"]);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "a fault must fail\n{out}\n{err}");
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(out.contains("FAIL"), "{out}");

    // The same through JSON: one document, the failing row marked.
    let o = optbench(&["verify", "--inject-fault", "--optimizers", "sgd", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    assert_eq!(v["verify"]["passed"], Value::Bool(false));
    assert_eq!(v["verify"]["fault_injected"], Value::Bool(true));
    let rows = v["verify"]["rows"].as_array().unwrap();
    assert_eq!(rows.iter().filter(|r| r["pass"] == false).count(), 1);
}

#[test]
fn bench_json_parses_with_positive_numbers() {
    if !have_gpu() {
        return;
    }
    let o = optbench(&QUICK_BENCH);
    let (out, err) = text(&o);
    assert!(o.status.success(), "exit {:?}\n{err}", o.status);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let b = &v["bench"];
    assert!(v["info"]["adapter"].as_str().is_some_and(|s| !s.is_empty()));
    let timer = b["timer"].as_str().unwrap();
    assert!(["gpu_timestamps", "wall_clock"].contains(&timer), "{timer}");
    positive(&b["roofline_gb_per_s"], "roofline");
    let copy = b["copy"].as_array().unwrap();
    assert_eq!(copy.len(), 2);
    for c in copy {
        positive(&c["gb_per_s"], "copy GB/s");
        positive(&c["ms_before"]["median"], "copy ms before");
        positive(&c["ms_after"]["median"], "copy ms after");
    }
    let cases = b["cases"].as_array().unwrap();
    // 2 optimizers x 2 sizes x 2 tensor counts.
    assert_eq!(cases.len(), 8);
    for c in cases {
        let what = format!("{} {} x{}", c["optimizer"], c["elements"], c["tensors"]);
        for key in ["median", "p10", "p90", "min", "max"] {
            positive(&c["ms"][key], &format!("{what} ms.{key}"));
        }
        let p10 = c["ms"]["p10"].as_f64().unwrap();
        let p90 = c["ms"]["p90"].as_f64().unwrap();
        assert!(p10 <= p90, "{what}");
        positive(&c["gb_per_s"], &what);
        positive(&c["fraction_of_copy"], &what);
        positive(&c["wall_ms_median"], &what);
        positive(&c["time_vs_one_tensor"], &what);
        let bpe = c["bytes_per_element"].as_u64().unwrap();
        assert!(bpe == 28 || bpe == 20, "{what}: {bpe}");
        positive(&c["cpu_reference"]["ms"]["median"], &what);
        positive(&c["cpu_reference"]["gb_per_s"], &what);
        if c["tensors"] == 10 {
            positive(&c["per_tensor_baseline"]["ms"]["median"], &what);
            positive(&c["per_tensor_baseline"]["fused_speedup"], &what);
        } else {
            assert!(c["per_tensor_baseline"].is_null(), "{what}");
        }
    }
    if v["info"]["device_type"] == "Cpu" {
        positive(&b["host_memcpy"]["gb_per_s"]["median"], "memcpy");
    }
}

#[test]
fn info_json_parses() {
    if !have_gpu() {
        return;
    }
    let o = optbench(&["info", "--json"]);
    assert!(o.status.success(), "{}", text(&o).1);
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    let i = &v["info"];
    for key in ["adapter", "backend", "device_type", "driver"] {
        assert!(i[key].is_string(), "{key}: {i}");
    }
    for key in [
        "max_storage_buffer_binding_size",
        "max_buffer_size",
        "max_compute_workgroups_per_dimension",
        "min_storage_buffer_offset_alignment",
        "binding_cap_bytes",
    ] {
        positive(&i[key], key);
    }
    assert!(i["timestamp_query"].is_boolean());
    assert!(v.get("bench").is_none() && v.get("verify").is_none());
}

#[test]
fn plot_writes_png_and_svg() {
    if !have_gpu() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("optbench-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for ext in ["png", "svg"] {
        let path = dir.join(format!("bench.{ext}"));
        let p = path.to_str().unwrap();
        let mut args = QUICK_BENCH.to_vec();
        args.extend(["--no-baseline", "--no-cpu", "--plot", p]);
        let o = optbench(&args);
        let (_, err) = text(&o);
        if err.contains("needs a TrueType font") {
            eprintln!("SKIP: no system font for the plot ({err})");
            return;
        }
        assert!(o.status.success(), "{err}");
        let bytes = std::fs::read(&path).unwrap();
        if ext == "png" {
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        } else {
            let s = String::from_utf8(bytes).unwrap();
            assert!(s.contains("<svg") && s.contains("copy kernel"), "{s}");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_arguments_fail_cleanly() {
    // No GPU needed: these are rejected before an adapter is opened.
    let o = optbench(&["bench", "--plot", "out.txt"]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains(".png or .svg"), "{}", text(&o).1);
    let o = optbench(&["bench", "--sizes", "12q"]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("bad size"), "{}", text(&o).1);
}

/// Impossible counts and sizes are errors that say what is wrong, before anything is
/// allocated (a 100-billion-element case used to abort the process on a failed allocation).
#[test]
fn impossible_counts_and_sizes_are_errors() {
    for (args, want) in [
        (&["bench", "--iters", "0"][..], "--iters 0"),
        (&["bench", "--warmup", "0"][..], "--warmup 0"),
        (&["bench", "--tensors", "0"][..], "must be positive"),
        (
            &["bench", "--tensors", "99999999999"][..],
            "--tensors 99999999999",
        ),
        (&["bench", "--optimizers", "nope"][..], "unknown optimizer"),
    ] {
        let o = optbench(args);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(text(&o).1.contains(want), "{args:?}: {}", text(&o).1);
    }
    // Needs the adapter's limit, so it runs on the GPU (or is a clear no-adapter error).
    let o = optbench(&[
        "bench",
        "--sizes",
        "99999999999",
        "--no-cpu",
        "--no-baseline",
    ]);
    assert!(!o.status.success());
    let err = text(&o).1;
    assert!(
        err.contains("max_buffer_size") || err.contains("no GPU adapter"),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("memory allocation"),
        "{err}"
    );
}

#[test]
fn muon_json_reports_stages_and_both_step_times() {
    if !have_gpu() {
        return;
    }
    let out = optbench(&[
        "muon", "--layers", "2", "--width", "24", "--iters", "2", "--warmup", "1", "--json",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let v: Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    let m = &v["muon"];
    assert_eq!(m["matrices"], 12);
    assert_eq!(m["params"], 2 * (4 * 24 * 24 + 2 * 4 * 24 * 24));
    let stages = m["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 3);
    for s in stages {
        assert_eq!(
            s["dispatches"], 1,
            "one dispatch per stage for all 12 matrices"
        );
        positive(&s["gflop"], "gflop");
        positive(&s["gflops"], "gflops");
    }
    positive(&m["muon_ms"]["median"], "muon ms");
    positive(&m["adamw_ms"]["median"], "adamw ms");
    // One batch: momentum, 3 stages x 5 NS steps, apply.
    assert_eq!(m["muon_dispatches"], 17);
}

#[test]
fn tune_times_every_candidate_and_writes_the_cache() {
    if !have_gpu() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("optbench-tune-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let o = optbench(&[
        "tune",
        "--optimizers",
        "sgd,lars",
        "--sizes",
        "64k",
        "--tune-cache-dir",
        d,
        "--json",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let kernels: Vec<&str> = v["tune"]["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["kernel"].as_str().unwrap())
        .collect();
    assert_eq!(
        kernels,
        ["copy_vec4", "norm_partials", "sgd_step", "lars_step"],
        "{out}"
    );
    for c in v["tune"]["choices"].as_array().unwrap() {
        assert_eq!(c["source"], "tuned");
        assert_eq!(c["elements"], 65536);
        assert!(c["timings"].as_array().unwrap().len() >= 3, "{c}");
    }
    assert!(dir.join("kernel-shapes.json").is_file());
    // info shows what the cache holds for this adapter.
    let o = optbench(&["info", "--tune-cache-dir", d]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("== kernel shapes") && out.contains("sgd_step") && out.contains("lars_step"),
        "{out}"
    );
    // A bad --shape is refused before anything runs.
    let o = optbench(&["info", "--shape", "100x3"]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("--shape"), "{}", text(&o).1);
    let _ = std::fs::remove_dir_all(&dir);
}
