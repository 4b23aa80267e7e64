//! Applying parsed assignments to the typed parameters, then the warnings and
//! the program-specific checks. See the parent module for the rules.

use super::names::{self, did_you_mean, Resolution};
use super::phil::{self, Assignment, Origin, Word};
use super::schema::{Root, Schema, Status};
use super::value::Ctx;
use super::{
    short_origin, Config, DiffBraggParams, Program, ProgramKind, RawSetting, Sources, StillsProcessParams,
};
use super::{Warning, WarningKind};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The words of a value written back as phil text, for error messages.
fn raw_text(words: &[Word]) -> String {
    words
        .iter()
        .map(|w| if w.quoted { format!("\"{}\"", w.text) } else { w.text.clone() })
        .collect::<Vec<_>>()
        .join(" ")
}

/// An error located at an assignment's origin.
fn located(origin: &Origin, name: &str, msg: String) -> Error {
    match origin {
        Origin::File { path, line } => Error::record(path, format!("line {line}"), msg),
        Origin::CmdLine { arg, .. } => Error::param(name, format!("--cmdlinePhil `{arg}`: {msg}")),
    }
}

/// At most this many errors are listed; the rest are counted.
const MAX_LISTED: usize = 20;

/// Combine all errors of a load into one.
fn combine(mut errors: Vec<Error>) -> Error {
    if errors.len() == 1 {
        return errors.remove(0);
    }
    let mut lines: Vec<String> = errors.iter().take(MAX_LISTED).map(|e| format!("  {e}")).collect();
    if errors.len() > MAX_LISTED {
        lines.push(format!("  … and {} more", errors.len() - MAX_LISTED));
    }
    Error::msg(format!("{} errors in the configuration:\n{}", errors.len(), lines.join("\n")))
}

/// A hint when an unknown name belongs to the other family's schema (a DIALS
/// proc phil given to a diffBragg program, or the reverse).
fn other_family_hint<P: Root>(name: &str) -> String {
    let (family, schema, program) = if P::FAMILY == DiffBraggParams::FAMILY {
        (StillsProcessParams::FAMILY, StillsProcessParams::schema(), "--program stills-process")
    } else {
        (DiffBraggParams::FAMILY, DiffBraggParams::schema(), "a diffBragg program")
    };
    if schema.get(name).is_some() || schema.opaque_scope(name).is_some() {
        format!("; it is a {family} parameter: give this file to {program}")
    } else {
        String::new()
    }
}

struct State<P: Root> {
    params: P,
    sources: BTreeMap<String, Vec<Origin>>,
    unmodelled: Vec<RawSetting>,
    errors: Vec<Error>,
}

impl<P: Root> State<P> {
    fn apply(&mut self, schema: &Schema, a: Assignment, base: &Path) {
        let name = a.name.as_str();
        if schema.get(name).is_some() {
            let Some(slot) = self.params.param_mut(name) else {
                self.errors
                    .push(Error::msg(format!("internal error: `{name}` is in the schema but has no field")));
                return;
            };
            match slot.set_words(&a.words, &Ctx { base_dir: base }) {
                Ok(()) => self.sources.entry(a.name).or_default().push(a.origin),
                Err(msg) => {
                    // A file error shows the assignment; a command-line one already quotes its argument.
                    let msg = match a.origin {
                        Origin::File { .. } => format!("`{name} = {}`: {msg}", raw_text(&a.words)),
                        Origin::CmdLine { .. } => msg,
                    };
                    self.errors.push(located(&a.origin, name, msg));
                }
            }
        } else if schema.is_scope(name) {
            let e = located(
                &a.origin,
                name,
                format!("`{name}` is a scope, not a parameter: set one of its parameters"),
            );
            self.errors.push(e);
        } else if let Some(p) = schema.param_prefix(name) {
            let msg =
                format!("`{p}` is a parameter, not a scope (in `{name}`){}", other_family_hint::<P>(name));
            let e = located(&a.origin, name, msg);
            self.errors.push(e);
        } else if schema.opaque_scope(name).is_some() {
            self.unmodelled.push(RawSetting {
                name: a.name.clone(),
                text: raw_text(&a.words),
                origin: a.origin.clone(),
            });
            self.sources.entry(a.name).or_default().push(a.origin);
        } else {
            let sugg = names::suggest(name, schema.defs.iter().map(|d| d.name.as_str()));
            let msg =
                format!("unknown parameter `{name}`{}{}", did_you_mean(&sugg), other_family_hint::<P>(name));
            self.errors.push(located(&a.origin, name, msg));
        }
    }
}

pub(super) fn load<K: ProgramKind>(
    files: &[(PathBuf, String)],
    cmdline: &[String],
    cwd: &Path,
) -> Result<(Config<K>, Vec<Warning>)> {
    let schema = K::Params::schema();
    let mut st = State::<K::Params> {
        params: Default::default(),
        sources: BTreeMap::new(),
        unmodelled: vec![],
        errors: vec![],
    };
    let mut resolved = Vec::new();

    for (path, text) in files {
        let abs = if path.is_absolute() { path.clone() } else { cwd.join(path) };
        let base = abs.parent().map(Path::to_path_buf).unwrap_or_else(|| cwd.to_path_buf());
        match phil::parse_file_text(text, &abs) {
            Err(e) => st.errors.push(Error::record(&abs, format!("line {}", e.line), e.msg)),
            Ok(asgs) => {
                for a in asgs {
                    st.apply(schema, a, &base);
                }
            }
        }
    }

    let all_names = || schema.defs.iter().map(|d| d.name.as_str());
    for (index, arg) in cmdline.iter().enumerate() {
        let origin = |_| Origin::CmdLine { index, arg: arg.clone() };
        let asgs = match phil::parse(arg, &origin) {
            Ok(a) => a,
            Err(e) => {
                st.errors.push(Error::msg(format!("--cmdlinePhil `{arg}`: {}", e.msg)));
                continue;
            }
        };
        if asgs.is_empty() {
            st.errors.push(Error::msg(format!("--cmdlinePhil `{arg}`: expected name=value")));
        }
        for mut a in asgs {
            let key = a.name.clone();
            match names::resolve(&key, all_names(), &K::uses) {
                Resolution::Found { name, others } => {
                    if !others.is_empty() {
                        resolved.push(format!(
                            "--cmdlinePhil `{key}` taken as `{name}`; it also matches {}, which {} does not read",
                            others.iter().map(|o| format!("`{o}`")).collect::<Vec<_>>().join(", "),
                            K::PROGRAM
                        ));
                    }
                    a.name = name;
                    st.apply(schema, a, cwd);
                }
                Resolution::Ambiguous(c) => st.errors.push(Error::param(
                    &key,
                    format!(
                        "--cmdlinePhil `{arg}` is ambiguous: it matches {}; write more of the name",
                        c.iter().map(|o| format!("`{o}`")).collect::<Vec<_>>().join(", ")
                    ),
                )),
                // Scopes, parameters-used-as-scopes and unmodelled DIALS
                // scopes need the full name: `apply` reports them.
                Resolution::Unknown(_) if schema.is_scope(&key) || schema.opaque_scope(&key).is_some() => {
                    st.apply(schema, a, cwd)
                }
                Resolution::Unknown(_) if schema.param_prefix(&key).is_some() => st.apply(schema, a, cwd),
                Resolution::Unknown(sugg) => st.errors.push(Error::param(
                    &key,
                    format!("--cmdlinePhil `{arg}`: unknown parameter{}", did_you_mean(&sugg)),
                )),
            }
        }
    }

    if !st.errors.is_empty() {
        return Err(combine(st.errors));
    }
    let cfg = Config::<K>::assemble(st.params, Sources(st.sources), st.unmodelled);
    let (errors, advice) = K::check(&cfg);
    if !errors.is_empty() {
        return Err(combine(errors));
    }
    let mut warnings = collect_warnings::<K>(schema, &cfg);
    warnings.extend(resolved.into_iter().map(|message| Warning { kind: WarningKind::Resolved, message }));
    warnings.extend(advice);
    Ok((cfg, warnings))
}

fn collect_warnings<K: ProgramKind>(schema: &Schema, cfg: &Config<K>) -> Vec<Warning> {
    let mut out = Vec::new();
    let mut ignored = Vec::new();
    let mut not_impl = Vec::new();
    let mut unused = Vec::new();
    for (name, origins) in &cfg.sources.0 {
        // Repeats within one file.
        let mut per_file: BTreeMap<&Path, Vec<usize>> = BTreeMap::new();
        for o in origins {
            if let Origin::File { path, line } = o {
                per_file.entry(path.as_path()).or_default().push(*line);
            }
        }
        for (path, lines) in per_file.into_iter().filter(|(_, l)| l.len() > 1) {
            let fname = path.file_name().map(|f| f.to_string_lossy()).unwrap_or_default();
            let lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            out.push(Warning {
                kind: WarningKind::Repeated,
                message: format!(
                    "`{name}` is set {} times in {fname} (lines {}); the last one wins",
                    lines.len(),
                    lines.join(", ")
                ),
            });
        }
        let at = origins.last().map(short_origin).unwrap_or_default();
        match schema.get(name).map(|d| d.status) {
            Some(Status::Ignored(reason)) => ignored.push(format!("  {name} ({at}): {reason}")),
            Some(Status::NotImplemented(note)) => not_impl.push(if note.is_empty() {
                format!("  {name} ({at})")
            } else {
                format!("  {name} ({at}): {note}")
            }),
            Some(Status::Implemented) if !K::uses(name) => unused.push(format!("  {name} ({at})")),
            Some(Status::Implemented) => {}
            None => {
                let scope = schema.opaque_scope(name).unwrap_or("");
                not_impl.push(format!("  {name} ({at}): inside DIALS scope `{scope}`, accepted unchecked"));
            }
        }
    }
    let list = |kind, head: String, items: Vec<String>| {
        (!items.is_empty()).then(|| Warning { kind, message: format!("{head}:\n{}", items.join("\n")) })
    };
    out.extend(list(
        WarningKind::Ignored,
        format!("{} recognised parameter(s) ignored", ignored.len()),
        ignored,
    ));
    out.extend(list(
        WarningKind::NotImplemented,
        format!("{} recognised parameter(s) not implemented; their values have no effect", not_impl.len()),
        not_impl,
    ));
    out.extend(list(
        WarningKind::NotUsedByProgram,
        format!("{} parameter(s) set but not read by `{}`", unused.len(), K::PROGRAM),
        unused,
    ));
    out
}

/// An error about parameter `name` at the place it was set (or its default).
fn bad(sources: &Sources, name: &str, value: String, msg: &str) -> Error {
    match sources.origin(name) {
        Some(o) => located(o, name, format!("`{name} = {value}`: {msg}")),
        None => Error::param(name, format!("default {value}: {msg}")),
    }
}

/// Checks of the diffBragg parameters that one field's type cannot express.
pub(super) fn check_diffbragg(
    program: Program,
    p: &DiffBraggParams,
    s: &Sources,
) -> (Vec<Error>, Vec<Warning>) {
    let mut errors = Vec::new();
    let mut advice = Vec::new();
    let refines = matches!(program, Program::Hopper | Program::EnsHopper);
    if refines && p.niter != 0 {
        errors.push(bad(
            s,
            "niter",
            p.niter.to_string(),
            "basin hopping is not implemented; only niter = 0 (one local minimisation)",
        ));
    }
    let nmos = p.simulator.crystal.num_mosaicity_samples;
    if nmos == 0 || (nmos > 1 && nmos % 2 == 1) {
        errors.push(bad(
            s,
            "simulator.crystal.num_mosaicity_samples",
            nmos.to_string(),
            "must be 1 or even (mosaic domains are generated in ± pairs)",
        ));
    }
    if p.refiner.num_devices == 0 {
        errors.push(bad(s, "refiner.num_devices", "0".into(), "must be at least 1"));
    }
    if p.refiner.adu_per_photon <= 0.0 {
        errors.push(bad(
            s,
            "refiner.adu_per_photon",
            p.refiner.adu_per_photon.to_string(),
            "must be positive",
        ));
    }
    if p.downsamp_spec.delta_en <= 0.0 {
        errors.push(bad(
            s,
            "downsamp_spec.delta_en",
            p.downsamp_spec.delta_en.to_string(),
            "must be positive",
        ));
    }
    if p.roi.shoebox_size < 2 {
        errors.push(bad(s, "roi.shoebox_size", p.roi.shoebox_size.to_string(), "must be at least 2 pixels"));
    }
    if refines && p.fhkl_channel_bounds.is_some() && p.space_group.is_none() {
        errors.push(bad(s, "space_group", "None".into(), "must be set when Fhkl_channel_bounds is"));
    }
    if program == Program::Integrate {
        let pr = &p.predictions;
        if !(0.0..=1.0).contains(&pr.weak_fraction) {
            errors.push(bad(
                s,
                "predictions.weak_fraction",
                pr.weak_fraction.to_string(),
                "must lie in [0, 1]",
            ));
        }
        let [lo, hi] = pr.resolution_range;
        if !(lo > 0.0 && lo < hi) {
            errors.push(bad(
                s,
                "predictions.resolution_range",
                format!("{lo} {hi}"),
                "need 0 < high-resolution limit < low-resolution limit",
            ));
        }
        if !s.is_set("predictions.qcut") && !s.is_set("predictions.label_weak_col") {
            advice.push(Warning {
                kind: WarningKind::Advice,
                message: "predictions.qcut and predictions.label_weak_col are both at their defaults (a 0.1-pixel radius), \
                          which matches almost no strong spot; set both (e.g. label_weak_col=rlp qcut=0.0025)"
                    .into(),
            });
        }
    }
    (errors, advice)
}

/// Checks of the DIALS spot-finding parameters.
pub(super) fn check_stills(p: &StillsProcessParams, s: &Sources) -> (Vec<Error>, Vec<Warning>) {
    use super::dials::ThresholdAlgorithm;
    let mut errors = Vec::new();
    if p.spotfinder.threshold.algorithm == ThresholdAlgorithm::RadialProfile {
        errors.push(bad(
            s,
            "spotfinder.threshold.algorithm",
            "radial_profile".into(),
            "not implemented; use dispersion or dispersion_extended",
        ));
    }
    let [kx, ky] = p.spotfinder.threshold.dispersion.kernel_size;
    if kx < 1 || ky < 1 {
        errors.push(bad(
            s,
            "spotfinder.threshold.dispersion.kernel_size",
            format!("{kx} {ky}"),
            "both must be at least 1",
        ));
    }
    (errors, vec![])
}
