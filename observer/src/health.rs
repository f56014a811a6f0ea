//! Probe health: a probe that attached but never ran while its partner ran
//! thousands of times is the classic silent failure of page-cache tools (a
//! renamed function, a changed argument, a program that reads the wrong
//! field and returns early). Pure: counts in, findings out.

use observer_abi::probes::{EXPECTATIONS, Prog, Role, functions};
use observer_report::{Counts, Health, Silence};

/// One attached program, the role of its row, and how often it ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ran {
    pub prog: Prog,
    pub role: Role,
    pub hits: u64,
}

/// The health section of the summary for these runs (each program once
/// per role).
pub fn assess(ran: &[Ran]) -> Health {
    let mut hits = Counts::default();
    for r in ran {
        if hits.iter().all(|(n, _)| n != r.prog.name()) {
            hits.add(r.prog.name(), r.hits);
        }
    }
    let of = |roles: &[Role]| -> Option<(u64, Vec<&'static str>)> {
        let mine: Vec<&Ran> = ran.iter().filter(|r| roles.contains(&r.role)).collect();
        if mine.is_empty() {
            return None;
        }
        let mut names: Vec<&'static str> = mine.iter().map(|r| r.prog.name()).collect();
        names.dedup();
        let mut seen = Vec::new();
        let mut total = 0;
        for r in mine {
            if !seen.contains(&r.prog) {
                seen.push(r.prog);
                total += r.hits;
            }
        }
        Some((total, names))
    };
    let mut silent = Vec::new();
    for e in EXPECTATIONS {
        let (Some((0, quiet)), Some((n, partner))) = (of(e.silent), of(e.partner)) else {
            continue;
        };
        if n >= e.min_partner_hits {
            silent.push(Silence {
                program: quiet.join("+"),
                partner: partner.join("+"),
                partner_hits: n,
                because: e.because.to_owned(),
            });
        }
    }
    Health { hits, silent }
}

/// The warning line for a silent probe.
pub fn warning(s: &Silence) -> String {
    format!(
        "warning: probe {} never ran while {} ran {} times ({}): its numbers mean nothing",
        s.program, s.partner, s.partner_hits, s.because
    )
}

/// `/healthz`: Ok while every core function (the probe table's) is attached and no probe is
/// silent when it should fire, and the run goes on; Err with the reason
/// otherwise. The text is the response body.
pub fn healthz(
    probes: &[observer_report::StartupProbe],
    health: &Health,
    finished: bool,
) -> Result<String, String> {
    let mut why = Vec::new();
    if finished {
        why.push("the run ended: the probes are detached".to_owned());
    }
    for f in functions(&Role::CORE) {
        match probes.iter().find(|p| p.function == f) {
            Some(p) if p.method.is_some() => {}
            _ => why.push(format!("core probe {f} is not attached")),
        }
    }
    why.extend(health.silent.iter().map(warning));
    if why.is_empty() {
        Ok("ok: every core probe is attached and none is silent\n".into())
    } else {
        Err(why.join("\n") + "\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(function: &str, method: Option<&str>) -> observer_report::StartupProbe {
        observer_report::StartupProbe {
            function: function.into(),
            method: method.map(str::to_owned),
            refused: vec![],
        }
    }

    #[test]
    fn healthz_names_what_is_wrong() {
        let all: Vec<_> = functions(&Role::CORE)
            .map(|f| probe(f, Some("fentry")))
            .collect();
        let fine = Health::default();
        assert!(healthz(&all, &fine, false).unwrap().starts_with("ok"));
        let e = healthz(&all, &fine, true).unwrap_err();
        assert!(e.contains("run ended"), "{e}");
        let mut missing = all.clone();
        missing[2].method = None;
        let e = healthz(&missing, &fine, false).unwrap_err();
        assert!(e.contains("filemap_map_pages is not attached"), "{e}");
        let e = healthz(&all[..2], &fine, false).unwrap_err();
        assert!(e.contains("filemap_map_pages is not attached"), "{e}");
        let silent = assess(&[
            ran(Prog::FolioDeleteRawTp, Role::FolioDelete, 2739),
            ran(Prog::FolioAddRawTp, Role::FolioAdd, 0),
        ]);
        let e = healthz(&all, &silent, false).unwrap_err();
        assert!(e.contains("probe folio_add_raw_tp never ran"), "{e}");
    }

    fn ran(prog: Prog, role: Role, hits: u64) -> Ran {
        Ran { prog, role, hits }
    }

    #[test]
    fn a_silent_add_beside_busy_deletes_is_named() {
        let h = assess(&[
            ran(Prog::FolioDeleteRawTp, Role::FolioDelete, 2739),
            ran(Prog::FolioAddRawTp, Role::FolioAdd, 0),
            ran(Prog::MapPagesTp, Role::MapPages, 5),
        ]);
        assert_eq!(h.silent.len(), 1, "{h:?}");
        assert_eq!(h.silent[0].program, "folio_add_raw_tp");
        assert_eq!(h.silent[0].partner, "folio_delete_raw_tp");
        assert_eq!(h.silent[0].partner_hits, 2739);
        assert_eq!(h.hits.get("folio_delete_raw_tp"), 2739);
        assert!(warning(&h.silent[0]).contains("never ran while folio_delete_raw_tp ran 2739"));
    }

    #[test]
    fn quiet_workloads_and_missing_probes_are_no_finding() {
        // The partner ran too little to tell.
        let h = assess(&[
            ran(Prog::FolioDeleteRawTp, Role::FolioDelete, 10),
            ran(Prog::FolioAddRawTp, Role::FolioAdd, 0),
        ]);
        assert!(h.silent.is_empty());
        // No PTE installer attached (the host): nothing to expect of it.
        let h = assess(&[ran(Prog::MapPagesTp, Role::MapPages, 1_000_000)]);
        assert!(h.silent.is_empty());
        // Both ran.
        let h = assess(&[
            ran(Prog::MapPagesFentry, Role::MapPages, 5000),
            ran(Prog::MapPagesFexit, Role::MapPages, 5000),
            ran(Prog::SetPteRangeFentry, Role::PteInstall, 20000),
        ]);
        assert!(h.silent.is_empty());
    }

    /// tmpfs: deletions through the tracepoint, additions only through
    /// shmem_add_to_page_cache. Either one running is the page cache's adds.
    #[test]
    fn shmem_adds_are_adds() {
        let h = assess(&[
            ran(Prog::FolioDeleteRawTp, Role::FolioDelete, 5000),
            ran(Prog::FolioAddRawTp, Role::FolioAdd, 0),
            ran(Prog::ShmemAddFentry, Role::ShmemAdd, 5000),
        ]);
        assert!(h.silent.is_empty(), "{h:?}");
        // Both silent: named together.
        let h = assess(&[
            ran(Prog::FolioDeleteRawTp, Role::FolioDelete, 5000),
            ran(Prog::FolioAddRawTp, Role::FolioAdd, 0),
            ran(Prog::ShmemAddFentry, Role::ShmemAdd, 0),
        ]);
        assert_eq!(h.silent.len(), 1, "{h:?}");
        assert_eq!(
            h.silent[0].program,
            "folio_add_raw_tp+shmem_add_to_page_cache_fentry"
        );
    }

    #[test]
    fn a_shared_program_counts_once() {
        let h = assess(&[
            ran(Prog::UnmapFentry, Role::Unmap, 0),
            ran(Prog::TruncateFentry, Role::Truncate, 60),
            ran(Prog::TruncateFentry, Role::Truncate, 60),
        ]);
        assert!(h.silent.is_empty(), "60 truncates are below the threshold");
        assert_eq!(h.hits.get("truncate_inode_pages_range_fentry"), 60);
    }
}
