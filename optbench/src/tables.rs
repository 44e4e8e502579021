//! Table and number formatting for the human-readable output.

/// `1M`, `4k` or the plain number.
pub(crate) fn fmt_elems(n: u64) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{}M", n >> 20)
    } else if n >= 1 << 10 && n % (1 << 10) == 0 {
        format!("{}k", n >> 10)
    } else {
        n.to_string()
    }
}

/// Renders an aligned table: text columns left-aligned, the rest right-aligned.
pub(crate) fn table(headers: &[&str], left: usize, rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i < left {
                    format!("{c:<width$}", width = w[i])
                } else {
                    format!("{c:>width$}", width = w[i])
                }
            })
            .collect();
        parts.join("  ").trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    let rule: Vec<String> = w.iter().map(|&n| "-".repeat(n)).collect();
    out.push_str(&rule.join("  "));
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(|s| s.as_str()).collect()));
        out.push('\n');
    }
    out
}

pub(crate) fn f3(x: f64) -> String {
    if x.is_finite() {
        if x >= 100.0 {
            format!("{x:.1}")
        } else {
            format!("{x:.3}")
        }
    } else {
        "-".into()
    }
}

pub(crate) fn f2(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "-".into()
    }
}

pub(crate) fn opt_f(x: Option<f64>, f: fn(f64) -> String) -> String {
    x.map(f).unwrap_or_else(|| "-".into())
}

pub(crate) fn mib(b: u64) -> String {
    if b % (1 << 20) == 0 {
        format!("{b} ({} MiB)", b >> 20)
    } else {
        format!("{b} ({:.1} MiB)", b as f64 / (1u64 << 20) as f64)
    }
}
