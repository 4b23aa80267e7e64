//! Configuration: users' diffBragg and DIALS phil files (unchanged) plus
//! `--cmdlinePhil` overrides → one typed, validated config per program.
//!
//! Layers (ripgrep's low/high split): [`phil`] parses text into assignments
//! (no names known); [`schema`] + [`diffbragg`]/[`dials`] declare every
//! parameter once as a typed struct field; `load` applies assignments to the
//! structs and validates; stage code only reads typed fields
//! (`cfg.init.nabc`, `cfg.refiner.sigma_r`), never strings.
//!
//! Conventions:
//! * **Names** are diffBragg's/DIALS's full dotted names, case-sensitive.
//!   In files a name must be complete (relative to its enclosing scopes).
//!   On the command line a key may be a dotted suffix (see [`names`]).
//! * **Precedence**: defaults, then the phil files in the order given, then
//!   `--cmdlinePhil` arguments in order; the last assignment wins. Setting a
//!   parameter twice in one file is allowed (DIALS files do it) but warned about.
//! * **Paths**: a relative path written in a phil file resolves against that
//!   file's folder, never the working directory; a relative path typed on the
//!   command line resolves against the directory the command was run from.
//!   Stored paths are absolute.
//! * **Provenance**: every value remembers where it was set ([`Sources`]).
//! * **Errors** name the file and line (or the command-line argument), the
//!   parameter and the bad value; all errors of a load are reported together.
//!   Unknown names are errors with a "did you mean"; recognised parameters
//!   that are not implemented or deliberately ignored produce one warning
//!   listing them all.

pub mod dials;
pub mod diffbragg;
mod load;
pub mod names;
pub mod phil;
pub mod render;
pub mod schema;
pub mod value;

pub use dials::StillsProcessParams;
pub use diffbragg::DiffBraggParams;
pub use phil::Origin;
pub use schema::{ParamDef, Root, Schema, Status};

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::path::{Path, PathBuf};

/// The programs whose configuration this module reads, named after their
/// diffBragg/DIALS counterparts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Program {
    /// Stage 1 (`simtbx.diffBragg.hopper`).
    Hopper,
    /// Prediction (`diffBragg.integrate`'s pred phil).
    Integrate,
    /// Spot finding on the data (`diffBragg.integrate`'s proc phil, DIALS `stills_process`).
    StillsProcess,
    /// Stage 2 (`ens.hopper`).
    EnsHopper,
}

impl Program {
    pub const ALL: [Program; 4] =
        [Program::Hopper, Program::Integrate, Program::StillsProcess, Program::EnsHopper];

    /// The name used on our command line.
    pub fn name(self) -> &'static str {
        match self {
            Program::Hopper => "hopper",
            Program::Integrate => "integrate",
            Program::StillsProcess => "stills-process",
            Program::EnsHopper => "ens-hopper",
        }
    }

    /// The reference program whose phil this reads.
    pub fn reference(self) -> &'static str {
        match self {
            Program::Hopper => "simtbx.diffBragg.hopper",
            Program::Integrate => "diffBragg.integrate (pred phil)",
            Program::StillsProcess => "dials.stills_process (diffBragg.integrate's proc phil)",
            Program::EnsHopper => "ens.hopper",
        }
    }

    pub fn from_name(s: &str) -> Option<Program> {
        Program::ALL.into_iter().find(|p| p.name() == s)
    }
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Ties a program to its parameter tree and its program-specific checks.
pub trait ProgramKind: Sized {
    type Params: Root;
    const PROGRAM: Program;
    /// Whether the program reads parameter `name` (for suffix tie-breaking
    /// and the "not read by this program" warning).
    fn uses(_name: &str) -> bool {
        true
    }
    /// Cross-parameter checks after loading: errors and advice.
    fn check(_cfg: &Config<Self>) -> (Vec<Error>, Vec<Warning>) {
        (vec![], vec![])
    }
}

/// Marker for stage 1.
#[derive(Debug)]
pub struct Hopper;
/// Marker for prediction.
#[derive(Debug)]
pub struct Integrate;
/// Marker for stage 2.
#[derive(Debug)]
pub struct EnsHopper;
/// Marker for DIALS spot finding.
#[derive(Debug)]
pub struct StillsProcess;

impl ProgramKind for Hopper {
    type Params = DiffBraggParams;
    const PROGRAM: Program = Program::Hopper;
    fn uses(name: &str) -> bool {
        diffbragg::used_by(Self::PROGRAM, name)
    }
    fn check(cfg: &Config<Self>) -> (Vec<Error>, Vec<Warning>) {
        load::check_diffbragg(Self::PROGRAM, &cfg.params, &cfg.sources)
    }
}

impl ProgramKind for Integrate {
    type Params = DiffBraggParams;
    const PROGRAM: Program = Program::Integrate;
    fn uses(name: &str) -> bool {
        diffbragg::used_by(Self::PROGRAM, name)
    }
    fn check(cfg: &Config<Self>) -> (Vec<Error>, Vec<Warning>) {
        load::check_diffbragg(Self::PROGRAM, &cfg.params, &cfg.sources)
    }
}

impl ProgramKind for EnsHopper {
    type Params = DiffBraggParams;
    const PROGRAM: Program = Program::EnsHopper;
    fn uses(name: &str) -> bool {
        diffbragg::used_by(Self::PROGRAM, name)
    }
    fn check(cfg: &Config<Self>) -> (Vec<Error>, Vec<Warning>) {
        load::check_diffbragg(Self::PROGRAM, &cfg.params, &cfg.sources)
    }
}

impl ProgramKind for StillsProcess {
    type Params = StillsProcessParams;
    const PROGRAM: Program = Program::StillsProcess;
    fn check(cfg: &Config<Self>) -> (Vec<Error>, Vec<Warning>) {
        load::check_stills(&cfg.params, &cfg.sources)
    }
}

/// A loaded, validated configuration for program `K`. Derefs to the typed
/// parameters, so stage code writes `cfg.init.nabc`.
pub struct Config<K: ProgramKind> {
    pub params: K::Params,
    /// Where each parameter that is not at its default was set.
    pub sources: Sources,
    /// Settings under DIALS scopes that are accepted unchecked, in order.
    pub unmodelled: Vec<RawSetting>,
    _program: PhantomData<fn() -> K>,
}

// Manual impls: derives would require the marker type itself to be Debug/Clone.
impl<K: ProgramKind> fmt::Debug for Config<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("program", &K::PROGRAM)
            .field("params", &self.params)
            .field("sources", &self.sources)
            .field("unmodelled", &self.unmodelled)
            .finish()
    }
}

impl<K: ProgramKind> Clone for Config<K> {
    fn clone(&self) -> Self {
        Config::assemble(self.params.clone(), self.sources.clone(), self.unmodelled.clone())
    }
}

/// Stage 1 configuration.
pub type HopperConfig = Config<Hopper>;
/// Prediction configuration (the pred phil). diffBragg.integrate applies
/// `--cmdlinePhil` to this file only, not to the proc phil (the LZ08 README
/// says otherwise, wrongly).
pub type IntegrateConfig = Config<Integrate>;
/// Stage 2 configuration.
pub type EnsHopperConfig = Config<EnsHopper>;
/// Spot finding on the data (the proc phil of diffBragg.integrate).
pub type StillsProcessConfig = Config<StillsProcess>;

impl<K: ProgramKind> Deref for Config<K> {
    type Target = K::Params;
    fn deref(&self) -> &K::Params {
        &self.params
    }
}

impl<K: ProgramKind> Config<K> {
    /// Read `phil_files` in order, then apply `cmdline` (`key=value` phil
    /// strings, as given to `--cmdlinePhil`). Relative paths typed in
    /// `cmdline` resolve against the current directory.
    pub fn load(phil_files: &[impl AsRef<Path>], cmdline: &[String]) -> Result<(Self, Vec<Warning>)> {
        let mut texts = Vec::new();
        for p in phil_files {
            let p = p.as_ref();
            let bytes =
                std::fs::read(p).map_err(|e| Error::file(p, format!("cannot read phil file: {e}")))?;
            let text = String::from_utf8(bytes).map_err(|e| {
                let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
                let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
                Error::record(p, format!("line {line}"), "not UTF-8 text")
            })?;
            texts.push((p.to_path_buf(), text));
        }
        let cwd = std::env::current_dir()
            .map_err(|e| Error::msg(format!("cannot determine the working directory: {e}")))?;
        Self::from_texts(&texts, cmdline, &cwd)
    }

    /// As [`Config::load`] with the file contents already read; `cwd` is the
    /// folder for relative file names and command-line paths.
    pub fn from_texts(
        files: &[(PathBuf, String)],
        cmdline: &[String],
        cwd: &Path,
    ) -> Result<(Self, Vec<Warning>)> {
        load::load::<K>(files, cmdline, cwd)
    }

    pub(crate) fn assemble(params: K::Params, sources: Sources, unmodelled: Vec<RawSetting>) -> Self {
        Config { params, sources, unmodelled, _program: PhantomData }
    }

    pub fn program(&self) -> Program {
        K::PROGRAM
    }
}

/// Where each explicitly set parameter was set, all assignments in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sources(pub BTreeMap<String, Vec<Origin>>);

impl Sources {
    /// The assignment in effect for `name`, or None if it is at its default.
    pub fn origin(&self, name: &str) -> Option<&Origin> {
        self.0.get(name).and_then(|v| v.last())
    }

    pub fn is_set(&self, name: &str) -> bool {
        self.origin(name).is_some()
    }

    /// "file.phil:12", "--cmdlinePhil `k=v`" or "default".
    pub fn describe(&self, name: &str) -> String {
        self.origin(name).map(short_origin).unwrap_or_else(|| "default".into())
    }
}

/// An origin with the file shown by name only (for compact listings).
pub fn short_origin(o: &Origin) -> String {
    match o {
        Origin::File { path, line } => {
            format!("{}:{}", path.file_name().map(|f| f.to_string_lossy()).unwrap_or_default(), line)
        }
        Origin::CmdLine { .. } => o.to_string(),
    }
}

/// A setting kept as text because its scope is recognised but not modelled.
#[derive(Debug, Clone, PartialEq)]
pub struct RawSetting {
    pub name: String,
    pub text: String,
    pub origin: Origin,
}

/// Something the user should know about the configuration that does not stop the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub kind: WarningKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarningKind {
    /// One parameter set twice in the same file.
    Repeated,
    /// A command-line suffix matched several names; the program's own was taken.
    Resolved,
    /// Recognised parameters that are deliberately ignored.
    Ignored,
    /// Recognised parameters that are not implemented.
    NotImplemented,
    /// Parameters this program does not read.
    NotUsedByProgram,
    /// Settings that are valid but probably not what was meant.
    Advice,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The schema of the parameters `program` reads.
pub fn schema_of(program: Program) -> &'static Schema {
    match program {
        Program::StillsProcess => StillsProcessParams::schema(),
        _ => DiffBraggParams::schema(),
    }
}
