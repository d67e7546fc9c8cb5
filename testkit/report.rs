use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The median of `values` (the mean of the middle two for an even count); `None` if empty.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// Writes a benchmark's Markdown report to `target/bench/NAME.md` (or under
/// `CARGO_TARGET_DIR`) and returns the path.
pub fn write_markdown(name: &str, markdown: &str) -> Result<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| manifest.join("target"), |dir| manifest.join(dir));
    let dir = target.join("bench");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!("{name}.md"));
    fs::write(&path, markdown).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// A number from the environment variable `key`, `default` when unset; at least `min`.
pub fn env_number<T>(key: &str, default: T, min: T) -> Result<T>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let Ok(value) = std::env::var(key) else {
        return Ok(default);
    };
    match value.trim().parse::<T>() {
        Ok(n) if n >= min => Ok(n),
        _ => anyhow::bail!("{key}={value:?}: expected a whole number of at least {min}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn medians() {
        assert_eq!(super::median(vec![]), None);
        assert_eq!(super::median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(super::median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
