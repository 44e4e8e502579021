//! Per-adapter kernel shapes: which work split each elementwise kernel runs on this adapter,
//! where that choice came from, and the on-disk cache that keeps it between runs.
//!
//! Every elementwise update kernel processes the arena in chunks of [`CHUNK`] elements, one
//! workgroup per chunk, and a [`KernelShape`] says how a workgroup splits its chunk: `W`
//! invocations each updating `V` vec4s strided by `W`, with `W * V * 4 == CHUNK`. The split
//! is a WGSL `override` pair (`WG_SIZE`, `VEC_PER_LANE`) in the pipeline key, so the arena's
//! layout (chunk tables, packing) is the same for every shape, and results are bit-identical:
//! each element's update reads and writes only that element. The passes that reduce (norms,
//! LARS/LAMB trust ratios, caution counts, hypergradient dots) take the split too: they fold
//! a fixed set of virtual lanes whatever it is (reduce.wgsl), so their sums keep one order.
//!
//! Which shape is fastest depends on the adapter (on lavapipe, a CPU, the narrowest
//! workgroups cost least per chunk; on a GPU, occupancy decides), so under [`Tuning::Auto`]
//! the optimizer times the candidates ([`KernelShape::candidates`]) the first time it builds
//! a kernel on an adapter, keeps the fastest, and records it in a JSON file in the cache
//! directory ([`default_cache_dir`]), keyed by adapter, driver, library version and the
//! kernel's source, so that the next process on the same adapter reuses it. A missing,
//! unreadable, read-only or corrupt cache is never an error: the shapes are then tuned again
//! (or the defaults used), and [`GpuContext::tune_report`](crate::GpuContext::tune_report)
//! says why.
//!
//! This module only holds choices; the timing loop is `autotune`, which the optimizers
//! (`optim::tuner`), the norm reducers and the copy roofline (`bench`) share.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::shaders::{CHUNK, VEC_PER_LANE, WG_SIZE};

/// Environment variable that sets the tuning policy of contexts opened without an explicit
/// one: `auto`, `cached`, `off`, or a shape such as `128x8` (pinned). See [`Tuning`].
pub const TUNE_ENV: &str = "WGPU_OPTIM_TUNE";
/// Environment variable that overrides the cache directory ([`default_cache_dir`]); empty
/// means no cache.
pub const CACHE_DIR_ENV: &str = "WGPU_OPTIM_CACHE_DIR";
/// The cache file's name inside the cache directory.
pub const CACHE_FILE: &str = "kernel-shapes.json";
/// The cache file's format tag.
pub const CACHE_FORMAT: &str = "wgpu-optim-kernel-shapes/1";

/// vec4s in one chunk: every shape's `workgroup_size * vec4_per_invocation`.
pub const VEC4_PER_CHUNK: u32 = CHUNK / 4;

/// How a workgroup splits its chunk: `workgroup_size` invocations, each updating
/// `vec4_per_invocation` vec4s strided by `workgroup_size` (WGSL `WG_SIZE`, `VEC_PER_LANE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KernelShape {
    /// Invocations per workgroup (a power of two).
    pub workgroup_size: u32,
    /// vec4s each invocation updates.
    pub vec4_per_invocation: u32,
}

impl Default for KernelShape {
    /// 256 x 4, the split the kernels were written for (WGSL defaults).
    fn default() -> Self {
        Self {
            workgroup_size: WG_SIZE,
            vec4_per_invocation: VEC_PER_LANE,
        }
    }
}

impl KernelShape {
    /// A shape of `workgroup_size` invocations; checks that it is a power of two in
    /// `1..=VEC4_PER_CHUNK`, so the chunk splits evenly.
    pub fn new(workgroup_size: u32) -> Result<Self> {
        if !workgroup_size.is_power_of_two() || workgroup_size > VEC4_PER_CHUNK {
            return Err(Error::InvalidConfig(
                "a kernel shape's workgroup size must be a power of two in 1..=1024 (a chunk \
                 is 1024 vec4s, split evenly among the invocations)",
            ));
        }
        Ok(Self {
            workgroup_size,
            vec4_per_invocation: VEC4_PER_CHUNK / workgroup_size,
        })
    }

    /// The shapes worth timing on a device with these limits: workgroups of 8 to 1024
    /// invocations (powers of two) that the device allows. 8 is the narrowest worth trying:
    /// a CPU adapter runs 8 invocations per 256-bit vector, and a GPU's subgroup is wider.
    pub fn candidates(limits: &wgpu::Limits) -> Vec<Self> {
        (3..=10)
            .map(|p| 1u32 << p)
            .filter_map(|w| Self::new(w).ok())
            .filter(|s| s.fits(limits))
            .collect()
    }

    /// Whether the device can run a workgroup of this size.
    pub fn fits(&self, limits: &wgpu::Limits) -> bool {
        self.workgroup_size <= limits.max_compute_invocations_per_workgroup
            && self.workgroup_size <= limits.max_compute_workgroup_size_x
    }

    /// Whether this is a valid split of a chunk (as [`KernelShape::new`] checks).
    pub fn is_valid(&self) -> bool {
        Self::new(self.workgroup_size).is_ok_and(|s| s == *self)
    }

    /// Invocations of the per-tensor and per-group reduction passes that go with this split:
    /// min(32, `workgroup_size`) (WGSL `RED_WG`; they fold 32 virtual lanes whatever it is).
    pub fn reduction_width(&self) -> u32 {
        self.workgroup_size.min(crate::shaders::RED_SIZE)
    }

    /// The WGSL `override` values for the pipeline key.
    pub(crate) fn constants(&self) -> [(&'static str, f64); 2] {
        [
            ("WG_SIZE", self.workgroup_size as f64),
            ("VEC_PER_LANE", self.vec4_per_invocation as f64),
        ]
    }
}

impl fmt::Display for KernelShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.workgroup_size, self.vec4_per_invocation)
    }
}

impl FromStr for KernelShape {
    type Err = Error;
    /// `"128x8"` or `"128"` (the vec4s per invocation follow from the chunk).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidConfig("a kernel shape is written WxV, for example 128x8");
        let mut it = s.trim().split('x');
        let w: u32 = it.next().and_then(|w| w.parse().ok()).ok_or_else(bad)?;
        let shape = Self::new(w)?;
        match it.next() {
            None => Ok(shape),
            Some(v) if v.parse::<u32>().ok() == Some(shape.vec4_per_invocation) => Ok(shape),
            Some(_) => Err(Error::InvalidConfig(
                "a kernel shape WxV must cover one chunk: W * V == 1024",
            )),
        }
    }
}

/// How a context chooses the shape of each elementwise kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum Tuning {
    /// The cached choice for this adapter; without one, time the candidates when the kernel
    /// is first built (tens to hundreds of milliseconds per kernel on lavapipe) and cache the
    /// winner. The default.
    #[default]
    Auto,
    /// The cached choice for this adapter, or the default shape; never times anything.
    CachedOnly,
    /// Always the default shape (256 x 4); the cache is neither read nor written.
    Defaults,
    /// This shape for every elementwise kernel (the cache is neither read nor written).
    Pinned(KernelShape),
}

impl Tuning {
    /// The policy named by [`TUNE_ENV`], or `Auto` when it is unset or empty.
    pub fn from_env() -> Result<Self> {
        match std::env::var(TUNE_ENV) {
            Ok(v) => v.parse(),
            Err(_) => Ok(Self::Auto),
        }
    }
}

impl FromStr for Tuning {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(Self::Auto),
            "cached" => Ok(Self::CachedOnly),
            "off" | "default" | "defaults" => Ok(Self::Defaults),
            other => other.parse().map(Self::Pinned).map_err(|_| {
                Error::InvalidConfig(
                    "WGPU_OPTIM_TUNE must be auto, cached, off, or a shape such as 128x8",
                )
            }),
        }
    }
}

/// Where a kernel's shape came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShapeSource {
    /// The default shape ([`Tuning::Defaults`], or [`Tuning::CachedOnly`] without an entry).
    Default,
    /// Pinned by the user ([`Tuning::Pinned`]).
    Pinned,
    /// Read from the cache file (timed by an earlier process on this adapter).
    Cached,
    /// Timed by this process.
    Tuned,
}

/// One candidate's measured time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CandidateTime {
    /// The shape.
    pub shape: KernelShape,
    /// Seconds per step (the fastest of the timed batches).
    pub seconds_per_step: f64,
}

/// The shape chosen for one kernel, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShapeChoice {
    /// The kernel's entry point (`"adam_step"`).
    pub kernel: String,
    /// The chosen shape.
    pub shape: KernelShape,
    /// Where it came from.
    pub source: ShapeSource,
    /// The timings it was chosen from (empty for the default and pinned shapes).
    pub timings: Vec<CandidateTime>,
    /// Elements of the arena the candidates were timed on.
    pub elements: u64,
    /// When the timing ran, in seconds since the Unix epoch (0 when nothing was timed).
    pub tuned_at_unix: u64,
}

/// What a cache entry is valid for: the adapter, its driver, this library's version and the
/// kernel's source. An entry that differs in any of them is stale and ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdapterKey {
    /// Adapter name.
    pub name: String,
    /// PCI vendor id.
    pub vendor: u32,
    /// PCI device id.
    pub device: u32,
    /// Backend (`vulkan`, `metal`, ...).
    pub backend: String,
    /// Driver name.
    pub driver: String,
    /// Driver version string.
    pub driver_info: String,
    /// This library's version.
    pub library: String,
}

impl AdapterKey {
    /// The key of an adapter, for this library version.
    pub fn of(info: &wgpu::AdapterInfo) -> Self {
        Self {
            name: info.name.clone(),
            vendor: info.vendor,
            device: info.device,
            backend: info.backend.to_str().to_string(),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            library: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheEntry {
    adapter: AdapterKey,
    /// FNV-1a of the kernel's composed WGSL, in hex: an edited kernel is timed again.
    source_hash: String,
    choice: ShapeChoice,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheFile {
    format: String,
    entries: Vec<CacheEntry>,
}

/// FNV-1a (64-bit) of a kernel source, as the cache's stable fingerprint (std's hasher is
/// not stable across Rust releases).
pub fn source_hash(source: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in source.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The default cache directory: [`CACHE_DIR_ENV`] if set (empty: none), else
/// `$XDG_CACHE_HOME/wgpu-optim`, else `$HOME/.cache/wgpu-optim`, else none.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var(CACHE_DIR_ENV) {
        return (!dir.trim().is_empty()).then(|| PathBuf::from(dir));
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return Some(PathBuf::from(x).join("wgpu-optim"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".cache").join("wgpu-optim"))
}

/// What the context knows about its kernels' shapes, for reports (`optbench info`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TuneReport {
    /// The policy.
    pub tuning: Tuning,
    /// The cache file, if there is a cache directory.
    pub cache_file: Option<PathBuf>,
    /// What happened with the cache file (read, missing, stale entries, unreadable, not
    /// writable, ...), in order.
    pub cache_notes: Vec<String>,
    /// Every kernel shape resolved so far, by kernel name.
    pub choices: Vec<ShapeChoice>,
    /// The cache file's entries for this adapter, driver and library version, by kernel name
    /// (an entry for a kernel whose source has since changed is listed but not used).
    pub cached: Vec<ShapeChoice>,
}

/// The answer of [`Tuner::resolve`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Resolved {
    /// Use this shape.
    Shape(KernelShape),
    /// Time the candidates (policy `Auto`, nothing cached).
    Tune,
}

/// The context's shape book: policy, cache directory, and every choice made so far.
#[derive(Debug)]
pub(crate) struct Tuner {
    state: Mutex<TunerState>,
}

/// Held while a kernel is being timed, by any context of the process: concurrent builders
/// wait for the result instead of timing it twice, and timings never run against each other.
static BUSY: Mutex<()> = Mutex::new(());

#[derive(Debug)]
struct TunerState {
    tuning: Tuning,
    cache_dir: Option<PathBuf>,
    adapter: AdapterKey,
    /// Entries read from the cache file that match this adapter, by (kernel, source hash).
    cached: HashMap<(String, String), ShapeChoice>,
    cache_loaded: bool,
    /// Resolved choices, by kernel.
    choices: HashMap<String, ShapeChoice>,
    notes: Vec<String>,
}

impl Tuner {
    pub(crate) fn new(
        info: &wgpu::AdapterInfo,
        tuning: Tuning,
        cache_dir: Option<PathBuf>,
    ) -> Self {
        Self {
            state: Mutex::new(TunerState {
                tuning,
                cache_dir,
                adapter: AdapterKey::of(info),
                cached: HashMap::new(),
                cache_loaded: false,
                choices: HashMap::new(),
                notes: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TunerState> {
        // Every update below is a single insert or assignment, so a poisoned lock still
        // guards a consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serializes timing runs (see [`BUSY`]).
    pub(crate) fn busy(&self) -> std::sync::MutexGuard<'static, ()> {
        BUSY.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the next lookup read the cache file again.
    pub(crate) fn reload_cache(&self) {
        let mut s = self.lock();
        s.cached.clear();
        s.cache_loaded = false;
    }

    pub(crate) fn set_tuning(&self, tuning: Tuning) {
        let mut s = self.lock();
        s.tuning = tuning;
        s.choices.clear();
    }

    pub(crate) fn tuning(&self) -> Tuning {
        self.lock().tuning
    }

    pub(crate) fn set_cache_dir(&self, dir: Option<PathBuf>) {
        let mut s = self.lock();
        s.cache_dir = dir;
        s.cached.clear();
        s.cache_loaded = false;
        s.choices.retain(|_, c| c.source == ShapeSource::Tuned);
    }

    /// The shape of `kernel` (whose composed source hashes to `hash`; `default` when nothing
    /// is cached or timed), or `Tune` when it must be timed. Candidates that do not fit `limits` are never returned.
    pub(crate) fn resolve(
        &self,
        kernel: &str,
        hash: &str,
        limits: &wgpu::Limits,
        default: KernelShape,
    ) -> Resolved {
        let mut s = self.lock();
        let fixed = |shape: KernelShape, source| ShapeChoice {
            kernel: kernel.to_string(),
            shape,
            source,
            timings: Vec::new(),
            elements: 0,
            tuned_at_unix: 0,
        };
        let choice = match s.tuning {
            Tuning::Defaults => fixed(default, ShapeSource::Default),
            Tuning::Pinned(shape) => fixed(shape, ShapeSource::Pinned),
            Tuning::Auto | Tuning::CachedOnly => {
                if let Some(c) = s.choices.get(kernel) {
                    return Resolved::Shape(c.shape);
                }
                s.load_cache();
                match s.cached.get(&(kernel.to_string(), hash.to_string())) {
                    Some(c) if c.shape.is_valid() && c.shape.fits(limits) => {
                        let mut c = c.clone();
                        c.source = ShapeSource::Cached;
                        c
                    }
                    _ if s.tuning == Tuning::Auto => return Resolved::Tune,
                    _ => fixed(default, ShapeSource::Default),
                }
            }
        };
        let shape = choice.shape;
        s.choices.insert(kernel.to_string(), choice);
        Resolved::Shape(shape)
    }

    /// Records a timed choice, in memory and (best effort) in the cache file.
    pub(crate) fn record(&self, hash: &str, choice: ShapeChoice) {
        let mut s = self.lock();
        s.choices.insert(choice.kernel.clone(), choice.clone());
        s.cached
            .insert((choice.kernel.clone(), hash.to_string()), choice.clone());
        let entry = CacheEntry {
            adapter: s.adapter.clone(),
            source_hash: hash.to_string(),
            choice,
        };
        if let Err(why) = s.store(entry) {
            s.note(why);
        }
    }

    pub(crate) fn report(&self) -> TuneReport {
        let mut s = self.lock();
        if matches!(s.tuning, Tuning::Auto | Tuning::CachedOnly) {
            s.load_cache();
        }
        let mut choices: Vec<ShapeChoice> = s.choices.values().cloned().collect();
        choices.sort_by(|a, b| a.kernel.cmp(&b.kernel));
        let mut cached: Vec<ShapeChoice> = s.cached.values().cloned().collect();
        cached.sort_by(|a, b| a.kernel.cmp(&b.kernel));
        TuneReport {
            tuning: s.tuning,
            cache_file: s.cache_dir.as_ref().map(|d| d.join(CACHE_FILE)),
            cache_notes: s.notes.clone(),
            choices,
            cached,
        }
    }
}

impl TunerState {
    fn note(&mut self, what: String) {
        if !self.notes.contains(&what) {
            self.notes.push(what);
        }
    }

    fn file(&self) -> Option<PathBuf> {
        self.cache_dir.as_ref().map(|d| d.join(CACHE_FILE))
    }

    /// Reads this adapter's entries once; anything wrong with the file becomes a note.
    fn load_cache(&mut self) {
        if self.cache_loaded {
            return;
        }
        self.cache_loaded = true;
        let Some(path) = self.file() else {
            self.note("no cache directory: shapes are timed in every process".into());
            return;
        };
        let file = match read_cache(&path) {
            Ok(Some(f)) => f,
            Ok(None) => {
                self.note(format!("{}: not there yet", path.display()));
                return;
            }
            Err(why) => {
                self.note(format!("{}: ignored ({why})", path.display()));
                return;
            }
        };
        let mut stale = 0;
        for e in file.entries {
            if e.adapter == self.adapter {
                self.cached
                    .insert((e.choice.kernel.clone(), e.source_hash), e.choice);
            } else {
                stale += 1;
            }
        }
        self.note(format!(
            "{}: {} entries for this adapter, {stale} for other adapters, drivers or versions",
            path.display(),
            self.cached.len()
        ));
    }

    /// Adds `entry` to the cache file, replacing this adapter's entry for the same kernel;
    /// written to a temporary file and renamed, so a reader never sees half a file.
    fn store(&self, entry: CacheEntry) -> std::result::Result<(), String> {
        let Some(path) = self.file() else {
            return Ok(());
        };
        let mut file = match read_cache(&path) {
            Ok(Some(f)) => f,
            // A missing or unreadable file is replaced.
            Ok(None) | Err(_) => CacheFile {
                format: CACHE_FORMAT.into(),
                entries: Vec::new(),
            },
        };
        file.entries
            .retain(|e| !(e.adapter == entry.adapter && e.choice.kernel == entry.choice.kernel));
        file.entries.push(entry);
        let text = serde_json::to_string_pretty(&file).map_err(|e| e.to_string())?;
        let not_written = |e: std::io::Error| format!("{}: not written ({e})", path.display());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(not_written)?;
        }
        let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
        std::fs::write(&tmp, text).map_err(not_written)?;
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            not_written(e)
        })
    }
}

/// The cache file: `Ok(None)` when it does not exist, `Err` when it cannot be read or parsed.
fn read_cache(path: &Path) -> std::result::Result<Option<CacheFile>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let file: CacheFile = serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
    if file.format != CACHE_FORMAT {
        return Err(format!(
            "format {:?}, expected {CACHE_FORMAT:?}",
            file.format
        ));
    }
    Ok(Some(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse_and_cover_a_chunk() {
        assert_eq!(
            "128x8".parse::<KernelShape>().unwrap(),
            KernelShape::new(128).unwrap()
        );
        assert_eq!("64".parse::<KernelShape>().unwrap().vec4_per_invocation, 16);
        for bad in ["", "x", "100", "128x4", "2048", "0", "256x"] {
            assert!(bad.parse::<KernelShape>().is_err(), "{bad}");
        }
        assert_eq!(KernelShape::default().to_string(), "256x4");
        assert!(KernelShape::default().is_valid());
        let odd = KernelShape {
            workgroup_size: 256,
            vec4_per_invocation: 3,
        };
        assert!(!odd.is_valid());
    }

    #[test]
    fn candidates_respect_the_limits() {
        let lim = wgpu::Limits {
            max_compute_invocations_per_workgroup: 256,
            max_compute_workgroup_size_x: 256,
            ..Default::default()
        };
        let c = KernelShape::candidates(&lim);
        assert_eq!(
            c.iter().map(|s| s.workgroup_size).collect::<Vec<_>>(),
            [8, 16, 32, 64, 128, 256]
        );
        assert!(c
            .iter()
            .all(|s| s.workgroup_size * s.vec4_per_invocation == VEC4_PER_CHUNK));
    }

    #[test]
    fn policies_parse() {
        assert_eq!("auto".parse::<Tuning>().unwrap(), Tuning::Auto);
        assert_eq!("cached".parse::<Tuning>().unwrap(), Tuning::CachedOnly);
        assert_eq!("off".parse::<Tuning>().unwrap(), Tuning::Defaults);
        assert_eq!(
            "512x2".parse::<Tuning>().unwrap(),
            Tuning::Pinned(KernelShape::new(512).unwrap())
        );
        assert!("fast".parse::<Tuning>().is_err());
    }

    #[test]
    fn source_hash_is_fnv1a() {
        // FNV-1a 64 of "a" is af63dc4c8601ec8c (the published test vector).
        assert_eq!(source_hash("a"), "af63dc4c8601ec8c");
        assert_ne!(source_hash("adam"), source_hash("adan"));
    }
}
