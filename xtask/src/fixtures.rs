//! Observer records for the unit tests, as the observer writes them.

use observer_report::{Startup, StartupProbe, Summary, Verdict};

/// A summary with `windows` windows, `alerts` alerts (all shown) and
/// `filtered` fault-arounds dropped by the kernel's pre-filter.
pub fn summary(windows: u64, alerts: u64, filtered: u64) -> Summary {
    Summary {
        duration_s: 1.5,
        windows,
        alerts,
        alerts_shown: alerts,
        filtered,
        verdict: if alerts > 0 {
            Verdict::RaceObserved
        } else {
            Verdict::NoRace
        },
        ..Summary::default()
    }
}

/// A startup record with these (function, method) probes.
pub fn startup(probes: &[(&str, Option<&str>)]) -> Startup {
    Startup {
        kernel: "6.12.0".into(),
        probes: probes
            .iter()
            .map(|&(function, method)| StartupProbe {
                function: function.into(),
                method: method.map(str::to_string),
                refused: vec![],
            })
            .collect(),
        programs: vec![],
    }
}
