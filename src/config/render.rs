//! Text shown by `diffbragg config show` and `diffbragg config explain`.
//!
//! `show` prints valid phil (values, then `# source` comments), so its output
//! can be saved and read back.

use super::names::{did_you_mean, is_suffix, suggest};
use super::schema::{ParamDef, Scope, Status};
use super::{
    diffbragg, short_origin, Config, DiffBraggParams, Program, ProgramKind, Root, StillsProcessParams,
};
use super::{Warning, WarningKind};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Every effective value with its source, then the warnings. With
/// `only_set`, parameters at their defaults are left out.
pub fn show<K: ProgramKind>(cfg: &Config<K>, warnings: &[Warning], only_set: bool) -> String {
    let schema = K::Params::schema();
    let mut out = String::new();
    let _ =
        writeln!(out, "# diffbragg config for `{}`: parameters of {}", K::PROGRAM, K::PROGRAM.reference());
    let mut rows = Vec::new();
    cfg.params.clone().visit("", &mut |name, meta, p| {
        let origin = cfg.sources.origin(name);
        if only_set && origin.is_none() {
            return;
        }
        let mut src = origin.map(short_origin).unwrap_or_else(|| "default".into());
        if origin.is_some() {
            match meta.status {
                Status::Implemented => {}
                Status::Ignored(_) => src.push_str(" (ignored)"),
                Status::NotImplemented(_) => src.push_str(" (not implemented)"),
            }
        }
        rows.push((format!("{name} = {}", p.text()), src));
    });
    // Unmodelled DIALS settings: the last assignment of each name.
    let mut raw: BTreeMap<&str, (&str, String)> = BTreeMap::new();
    for r in &cfg.unmodelled {
        raw.insert(&r.name, (&r.text, short_origin(&r.origin)));
    }
    let width = rows
        .iter()
        .map(|r| r.0.len())
        .chain(raw.iter().map(|(n, (t, _))| n.len() + t.len() + 3))
        .max()
        .unwrap_or(0)
        .min(60);
    for (line, src) in &rows {
        let _ = writeln!(out, "{line:width$}  # {src}");
    }
    if !raw.is_empty() {
        let _ = writeln!(
            out,
            "# accepted unchecked ({} scopes this program does not model):",
            <K::Params as Root>::FAMILY
        );
        for (name, (text, src)) in raw {
            let _ = writeln!(out, "{:width$}  # {src} (not implemented)", format!("{name} = {text}"));
        }
    }
    debug_assert!(rows.len() <= schema.defs.len());
    if warnings.is_empty() {
        let _ = writeln!(out, "# no warnings");
    } else {
        let _ = writeln!(out, "# {} warning(s):", warnings.len());
        for w in warnings {
            for (i, line) in w.message.lines().enumerate() {
                let _ = writeln!(out, "#{} {line}", if i == 0 { " -" } else { "  " });
            }
        }
    }
    out
}

/// The family and the programs that read a parameter.
fn readers(family: &str, name: &str) -> String {
    if family == StillsProcessParams::FAMILY {
        return Program::StillsProcess.name().into();
    }
    Program::ALL
        .into_iter()
        .filter(|&p| p != Program::StillsProcess && diffbragg::used_by(p, name))
        .map(Program::name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn explain_one(out: &mut String, family: &str, d: &ParamDef) {
    let _ = writeln!(out, "{}  ({family} parameter; read by {})", d.name, readers(family, &d.name));
    let _ = writeln!(out, "  type:    {}", d.type_name);
    let _ = writeln!(out, "  default: {}", d.default);
    if !d.units.is_empty() {
        let _ = writeln!(out, "  units:   {}", d.units);
    }
    let _ = writeln!(out, "  status:  {}", d.status.label());
    let _ = writeln!(out, "  {}", d.help);
}

/// Documentation of the parameter(s) named by `key`: a full name, a dotted
/// suffix (every match is shown) or a scope (its parameters are listed).
pub fn explain(key: &str) -> Result<String> {
    let families = [
        (DiffBraggParams::FAMILY, DiffBraggParams::schema()),
        (StillsProcessParams::FAMILY, StillsProcessParams::schema()),
    ];
    let mut out = String::new();
    let exact: Vec<_> = families.iter().filter_map(|(f, s)| s.get(key).map(|d| (*f, d))).collect();
    let matches: Vec<_> = if exact.is_empty() {
        families
            .iter()
            .flat_map(|(f, s)| s.defs.iter().filter(|d| is_suffix(key, &d.name)).map(move |d| (*f, d)))
            .collect()
    } else {
        exact
    };
    if !matches.is_empty() {
        if matches.len() > 1 {
            let _ = writeln!(out, "`{key}` matches {} parameters:\n", matches.len());
        }
        for (i, (f, d)) in matches.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            explain_one(&mut out, f, d);
        }
        return Ok(out);
    }
    for (f, s) in &families {
        if s.is_scope(key) {
            let _ = writeln!(out, "`{key}` is a {f} scope with these parameters:");
            for d in s.defs.iter().filter(|d| d.name.strip_prefix(key).is_some_and(|r| r.starts_with('.'))) {
                let mark = match d.status {
                    Status::Implemented => "",
                    Status::Ignored(_) => "  [ignored]",
                    Status::NotImplemented(_) => "  [not implemented]",
                };
                let _ = writeln!(out, "  {} = {}{mark}", d.name, d.default);
            }
        }
        if let Some(scope) = s.opaque_scope(key) {
            let _ = writeln!(
                out,
                "`{key}` lies in the {f} scope `{scope}`, which is accepted unchecked and not implemented \
                 (its names are not verified against {f})"
            );
        }
    }
    if !out.is_empty() {
        return Ok(out);
    }
    let all = families.iter().flat_map(|(_, s)| s.defs.iter().map(|d| d.name.as_str()));
    Err(Error::param(key, format!("unknown parameter{}", did_you_mean(&suggest(key, all)))))
}

/// Warnings of one kind (for tests and callers that filter).
pub fn of_kind(warnings: &[Warning], kind: WarningKind) -> Vec<&Warning> {
    warnings.iter().filter(|w| w.kind == kind).collect()
}
