//! What the JSON files xtask writes (matrix.json, the benchmark's) share.

use observer_report::StartupProbe;
use serde::Serialize;

/// `x` rounded to `decimals` places: the digits that mean something. None
/// (JSON null) for NaN and infinities, which JSON cannot hold.
pub fn rounded(x: f64, decimals: i32) -> Option<f64> {
    let scale = 10f64.powi(decimals);
    x.is_finite().then(|| (x * scale).round() / scale)
}

/// How the observer attached one kernel function, from its startup record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Probe {
    pub function: String,
    /// None when every method was refused.
    pub method: Option<String>,
}

impl From<&StartupProbe> for Probe {
    fn from(p: &StartupProbe) -> Probe {
        Probe {
            function: p.function.clone(),
            method: p.method.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::rounded;

    #[test]
    fn rounds_and_nulls() {
        assert_eq!(rounded(1.23456, 2), Some(1.23));
        assert_eq!(rounded(612345.67, 1), Some(612345.7));
        assert_eq!(rounded(f64::INFINITY, 1), None);
        assert_eq!(serde_json::to_string(&rounded(100.0, 1)).unwrap(), "100.0");
    }
}
