//! Loads a system TrueType font as plotters' "sans-serif": plotters draws no text without one.
//! Shared by `optbench --plot` and the examples that draw pictures (which include this file
//! with `#[path]`), so it uses only std, plotters and anyhow.

use std::path::PathBuf;

use anyhow::{bail, Result};

/// Registers the first readable font among `OPTBENCH_FONT` and the usual system paths.
pub(crate) fn register_font() -> Result<()> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(p) = std::env::var("OPTBENCH_FONT") {
        candidates.push(p.into());
    }
    for p in [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
        "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
        "/usr/share/fonts/noto/NotoSans-Regular.ttf",
        "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
        "/Library/Fonts/Arial.ttf",
        "/System/Library/Fonts/Supplemental/Arial.ttf",
        "C:\\Windows\\Fonts\\arial.ttf",
    ] {
        candidates.push(p.into());
    }
    for p in &candidates {
        if let Ok(bytes) = std::fs::read(p) {
            // plotters keeps registered fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            let style = plotters::style::FontStyle::Normal;
            if plotters::style::register_font("sans-serif", style, bytes).is_ok() {
                return Ok(());
            }
        }
    }
    bail!(
        "drawing the picture needs a TrueType font for its text and found none (looked at {}). \
         Install one (Debian/Ubuntu: `apt-get install fonts-dejavu-core`; Fedora: `dnf install \
         dejavu-sans-fonts`) or set OPTBENCH_FONT=/path/to/font.ttf",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}
