//! Reader and writer of DIALS experiment lists (`.expt`, `experiments.json`).
//!
//! Format: `shared/docs/formats.md` §1. Conventions of the models:
//! [`crate::experiment`], [`crate::geometry`], [`crate::crystal`].
//!
//! Decisions (the reference is lenient or subtle here):
//! * Python's `json` writes bare `NaN`/`Infinity`/`-Infinity`, which is not
//!   JSON. Before parsing, such tokens outside string literals become the
//!   sentinel strings [`NONFINITE_NAN`] etc.; number readers accept them, and
//!   the writer turns them back into bare tokens, as Python does.
//! * Missing pool keys are `[]`; `""` means null for imageset lookups; a model
//!   given as a file name (legacy dxtbx) is rejected with a clear error.
//! * Axes: dxtbx accepts any non-zero axis and normalises it, and only checks
//!   the *signed* dot product `fast·slow < 1e-7` (so a strongly negative dot
//!   passes). [TRAP] We reject axes whose length is off 1 by more than
//!   [`UNIT_TOL`] or whose |cos(fast, slow)| exceeds [`ORTHO_TOL`]; within the
//!   tolerance they are normalised like dxtbx does.
//! * Panel and group frames in the file are local to the parent node; they are
//!   composed into lab-frame panels with [`Frame::child`]. Every panel must be
//!   referenced exactly once by the hierarchy (as in dxtbx).
//! * Old files put `mu`/`t0` inside a parallax px_mm_strategy; as in dxtbx
//!   they override the panel's `mu`/`thickness`.
//! * Relative paths resolve against the folder of the file (no environment
//!   variable or `~` expansion, no existence check, unlike dxtbx).
//! * "Load only experiment i" ([`ExperimentList::read_one`]) parses only the
//!   models that experiment uses; models no experiment references are not
//!   parsed (nor validated) and are not written back.
//!
//! Writing keeps what was read: each model is written by patching its original
//! JSON object, replacing only the keys whose typed value changed (a key whose
//! value re-reads to the same model keeps its original text form). Pools are
//! rebuilt in order of first reference, as dxtbx writes them; models that came
//! from the same pool entry and are still equal stay shared. Lab-frame panels
//! are authoritative: a panel's written local frame is its original one when
//! that still composes to the panel's lab frame, else it is derived from the
//! lab frame and the (possibly changed) parent group.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Number, Value};

use crate::conventions::{Mat3, Vec3};
use crate::crystal::Crystal;
use crate::error::{io_err, Error, Result};
use crate::experiment::{
    BeamKind, BeamMeta, CrystalMeta, DetectorMeta, Experiment, ExperimentList, ImageSetKind, ImageSetRef,
    ModelOrigin, PanelMeta, Projection2d, Provenance, PxMmStrategy,
};
use crate::geometry::{Beam, Detector, DetectorNode, Frame, NodeChild, Panel};

/// Sentinel string standing for a bare `NaN` token inside raw JSON values.
pub const NONFINITE_NAN: &str = "\u{0}NaN";
/// Sentinel string for `Infinity`.
pub const NONFINITE_INF: &str = "\u{0}Infinity";
/// Sentinel string for `-Infinity`.
pub const NONFINITE_NEG_INF: &str = "\u{0}-Infinity";

/// Largest accepted deviation of an axis length from 1.
pub const UNIT_TOL: f64 = 1e-3;
/// Largest accepted |cos| between a fast and a slow axis.
pub const ORTHO_TOL: f64 = 1e-6;

/// Model pools in the order dxtbx writes model references in an experiment.
const POOLS: [&str; 8] =
    ["beam", "detector", "goniometer", "scan", "crystal", "profile", "scaling_model", "imageset"];
/// Pool keys in the order dxtbx writes them at the top level.
const TOP_ORDER: [&str; 8] =
    ["imageset", "beam", "detector", "goniometer", "scan", "crystal", "profile", "scaling_model"];

/// Keys of the top-level object that the reader interprets.
pub(crate) fn is_structural_key(k: &str) -> bool {
    k == "__id__" || k == "experiment" || POOLS.contains(&k)
}

impl ExperimentList {
    /// Read every experiment of a `.expt`/`.json` file.
    pub fn read(path: impl AsRef<Path>) -> Result<ExperimentList> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
        ExperimentList::from_json_bytes(&bytes, path)
    }

    /// Read only experiment `idx` (and the models it uses), as diffBragg's
    /// hopper does so a rank never holds a big combined file. Written back,
    /// its models are re-indexed from 0.
    pub fn read_one(path: impl AsRef<Path>, idx: usize) -> Result<ExperimentList> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
        ExperimentList::from_json_bytes_one(&bytes, path, idx)
    }

    /// Parse file contents. `path` names the file in errors and gives the
    /// folder that relative image paths resolve against; it is not read.
    pub fn from_json_bytes(bytes: &[u8], path: &Path) -> Result<ExperimentList> {
        decode(parse_json(bytes, path)?, path, None)
    }

    /// [`ExperimentList::from_json_bytes`] keeping only experiment `idx`.
    pub fn from_json_bytes_one(bytes: &[u8], path: &Path, idx: usize) -> Result<ExperimentList> {
        decode(parse_json(bytes, path)?, path, Some(idx))
    }

    /// Write the list atomically (`path.tmp-<pid>`, then rename).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let text = self.to_json_string(path)?;
        atomic_write(path, text.as_bytes())
    }

    /// The JSON text [`ExperimentList::write`] would write to `out_path`
    /// (relative image paths are kept only if they still resolve from there).
    pub fn to_json_string(&self, out_path: &Path) -> Result<String> {
        let v = encode(&self.experiments, self.top.as_ref(), out_path)?;
        Ok(to_python_json(&v))
    }
}

/// Write experiments (from one or several lists, or built in memory) as one file, atomically.
pub fn write_experiments(path: impl AsRef<Path>, experiments: &[Experiment]) -> Result<()> {
    let path = path.as_ref();
    let v = encode(experiments, None, path)?;
    atomic_write(path, to_python_json(&v).as_bytes())
}

// ---------------------------------------------------------------------------
// JSON text: non-finite tokens in, Python-style text out.

/// Parse JSON text, tolerating Python's bare non-finite tokens.
pub fn parse_json(bytes: &[u8], path: &Path) -> Result<Value> {
    let fixed = replace_nonfinite_tokens(bytes);
    serde_json::from_slice(&fixed).map_err(|e| Error::file(path, format!("invalid JSON: {e}")))
}

/// Replace `NaN`, `Infinity`, `-Infinity` outside string literals by the
/// sentinel strings. Returns the input unchanged when none occurs.
pub fn replace_nonfinite_tokens(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let has = |pat: &[u8]| bytes.windows(pat.len()).any(|w| w == pat);
    if !has(b"NaN") && !has(b"Infinity") {
        return std::borrow::Cow::Borrowed(bytes);
    }
    let tokens: [(&[u8], &str); 3] = [
        (b"-Infinity", "\"\\u0000-Infinity\""),
        (b"Infinity", "\"\\u0000Infinity\""),
        (b"NaN", "\"\\u0000NaN\""),
    ];
    let mut out = Vec::with_capacity(bytes.len() + 64);
    let mut in_string = false;
    let mut i = 0;
    'outer: while i < bytes.len() {
        let c = bytes[i];
        if in_string {
            out.push(c);
            if c == b'\\' {
                if let Some(&next) = bytes.get(i + 1) {
                    out.push(next);
                    i += 1;
                }
            } else if c == b'"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        if c == b'"' {
            in_string = true;
        } else {
            for (tok, rep) in tokens {
                if bytes[i..].starts_with(tok) {
                    out.extend_from_slice(rep.as_bytes());
                    i += tok.len();
                    continue 'outer;
                }
            }
        }
        out.push(c);
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

/// JSON text as Python's `json.dump(indent=2)` writes it, with bare
/// `NaN`/`Infinity`/`-Infinity` for the sentinel strings.
pub fn to_python_json(v: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, v, 0);
    out
}

fn write_value(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => match s.as_str() {
            NONFINITE_NAN => out.push_str("NaN"),
            NONFINITE_INF => out.push_str("Infinity"),
            NONFINITE_NEG_INF => out.push_str("-Infinity"),
            _ => write_string(out, s),
        },
        Value::Array(a) if a.is_empty() => out.push_str("[]"),
        Value::Object(m) if m.is_empty() => out.push_str("{}"),
        Value::Array(a) => {
            out.push_str("[\n");
            for (i, x) in a.iter().enumerate() {
                push_indent(out, indent + 2);
                write_value(out, x, indent + 2);
                out.push_str(if i + 1 < a.len() { ",\n" } else { "\n" });
            }
            push_indent(out, indent);
            out.push(']');
        }
        Value::Object(m) => {
            out.push_str("{\n");
            for (i, (k, x)) in m.iter().enumerate() {
                push_indent(out, indent + 2);
                write_string(out, k);
                out.push_str(": ");
                write_value(out, x, indent + 2);
                out.push_str(if i + 1 < m.len() { ",\n" } else { "\n" });
            }
            push_indent(out, indent);
            out.push('}');
        }
    }
}

/// A string literal as Python writes it (`ensure_ascii`: non-ASCII as `\uXXXX`).
fn write_string(out: &mut String, s: &str) {
    use std::fmt::Write;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            c => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

fn push_indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

/// A number (or a non-finite sentinel) as f64.
pub fn value_as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            NONFINITE_NAN => Some(f64::NAN),
            NONFINITE_INF => Some(f64::INFINITY),
            NONFINITE_NEG_INF => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

/// An f64 as a JSON value (non-finite values become sentinels).
pub fn f64_value(x: f64) -> Value {
    match Number::from_f64(x) {
        Some(n) => Value::Number(n),
        None if x.is_nan() => Value::String(NONFINITE_NAN.into()),
        None if x > 0.0 => Value::String(NONFINITE_INF.into()),
        None => Value::String(NONFINITE_NEG_INF.into()),
    }
}

/// Equality of JSON values where numbers compare by value (1 == 1.0) and NaN
/// equals NaN. For tests and callers comparing files.
pub fn json_values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(_), _) | (_, Value::Number(_)) => match (value_as_f64(a), value_as_f64(b)) {
            (Some(x), Some(y)) => x == y || (x.is_nan() && y.is_nan()),
            _ => false,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_values_equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, p)| y.get(k).is_some_and(|q| json_values_equal(p, q)))
        }
        _ => a == b,
    }
}

// ---------------------------------------------------------------------------
// Typed access to JSON objects, with errors that name file and location.

fn kind_of(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("{b}"),
        Value::Number(n) => format!("{n}"),
        Value::String(s) => match value_as_f64(v) {
            Some(x) => format!("{x}"),
            None if s.chars().count() > 40 => {
                format!("a string ({:?}...)", s.chars().take(40).collect::<String>())
            }
            None => format!("the string {s:?}"),
        },
        Value::Array(a) => format!("a list of {}", a.len()),
        Value::Object(_) => "an object".into(),
    }
}

struct Cx<'a> {
    path: &'a Path,
}

impl Cx<'_> {
    /// A context for re-parsing models while writing (errors are not shown).
    fn quiet() -> Cx<'static> {
        Cx { path: Path::new("") }
    }

    fn err(&self, loc: &str, msg: impl Into<String>) -> Error {
        Error::record(self.path, loc, msg)
    }

    fn obj<'v>(&'v self, v: &'v Value, loc: &str) -> Result<Obj<'v>> {
        match v {
            Value::Object(map) => Ok(Obj { cx: self, map, loc: loc.to_string() }),
            _ => Err(self.err(loc, format!("expected an object, found {}", kind_of(v)))),
        }
    }

    fn f64(&self, v: &Value, loc: &str) -> Result<f64> {
        value_as_f64(v).ok_or_else(|| self.err(loc, format!("expected a number, found {}", kind_of(v))))
    }

    fn i64(&self, v: &Value, loc: &str) -> Result<i64> {
        if let Some(i) = v.as_i64() {
            return Ok(i);
        }
        match v.as_f64() {
            // Integral floats (1024.0) are accepted for integer fields.
            Some(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => Ok(x as i64),
            _ => Err(self.err(loc, format!("expected an integer, found {}", kind_of(v)))),
        }
    }

    fn index(&self, v: &Value, loc: &str) -> Result<usize> {
        let i = self.i64(v, loc)?;
        usize::try_from(i).map_err(|_| self.err(loc, format!("expected a non-negative integer, found {i}")))
    }

    fn list<'v>(&self, v: &'v Value, loc: &str) -> Result<&'v Vec<Value>> {
        v.as_array().ok_or_else(|| self.err(loc, format!("expected a list, found {}", kind_of(v))))
    }

    fn sized<'v>(&self, v: &'v Value, n: usize, loc: &str) -> Result<&'v Vec<Value>> {
        let a = self.list(v, loc)?;
        if a.len() != n {
            return Err(self.err(loc, format!("expected a list of {n}, found a list of {}", a.len())));
        }
        Ok(a)
    }

    fn floats<const N: usize>(&self, v: &Value, loc: &str) -> Result<[f64; N]> {
        let a = self.sized(v, N, loc)?;
        let mut out = [0.0; N];
        for (i, x) in a.iter().enumerate() {
            out[i] = self.f64(x, &format!("{loc}[{i}]"))?;
        }
        Ok(out)
    }

    fn ints<const N: usize>(&self, v: &Value, loc: &str) -> Result<[i64; N]> {
        let a = self.sized(v, N, loc)?;
        let mut out = [0; N];
        for (i, x) in a.iter().enumerate() {
            out[i] = self.i64(x, &format!("{loc}[{i}]"))?;
        }
        Ok(out)
    }

    fn i32s<const N: usize>(&self, v: &Value, loc: &str) -> Result<[i32; N]> {
        let a = self.ints::<N>(v, loc)?;
        let mut out = [0; N];
        for (i, x) in a.iter().enumerate() {
            out[i] = i32::try_from(*x)
                .map_err(|_| self.err(loc, format!("value {x} does not fit a 32-bit integer")))?;
        }
        Ok(out)
    }

    fn vec3(&self, v: &Value, loc: &str) -> Result<Vec3> {
        let a = self.floats::<3>(v, loc)?;
        Ok(Vec3::new(a[0], a[1], a[2]))
    }

    fn finite_vec3(&self, v: &Value, loc: &str) -> Result<Vec3> {
        let x = self.vec3(v, loc)?;
        if !x.iter().all(|c| c.is_finite()) {
            return Err(self.err(loc, "components must be finite"));
        }
        Ok(x)
    }

    /// A unit axis: finite, non-zero, length within [`UNIT_TOL`] of 1; normalised.
    fn axis(&self, v: &Value, loc: &str) -> Result<Vec3> {
        let x = self.finite_vec3(v, loc)?;
        let n = x.norm();
        if n == 0.0 {
            return Err(self.err(loc, "zero-length axis"));
        }
        if (n - 1.0).abs() > UNIT_TOL {
            return Err(self.err(loc, format!("axis is not a unit vector (length {n})")));
        }
        Ok(x / n)
    }

    fn string(&self, v: &Value, loc: &str) -> Result<String> {
        match v {
            Value::String(s) if value_as_f64(v).is_none() => Ok(s.clone()),
            _ => Err(self.err(loc, format!("expected a string, found {}", kind_of(v)))),
        }
    }
}

/// A JSON object with its location, for field access.
struct Obj<'a> {
    cx: &'a Cx<'a>,
    map: &'a Map<String, Value>,
    loc: String,
}

impl<'a> Obj<'a> {
    fn at(&self, key: &str) -> String {
        format!("{}.{}", self.loc, key)
    }

    /// The value of `key`; null counts as absent.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn require(&self, key: &str) -> Result<&'a Value> {
        self.get(key).ok_or_else(|| self.cx.err(&self.loc, format!("missing key `{key}`")))
    }

    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        self.get(key).map_or(Ok(default), |v| self.cx.f64(v, &self.at(key)))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key).map(|v| self.cx.f64(v, &self.at(key))).transpose()
    }

    fn finite_f64(&self, key: &str) -> Result<f64> {
        let x = self.cx.f64(self.require(key)?, &self.at(key))?;
        if !x.is_finite() {
            return Err(self.cx.err(&self.at(key), "must be finite"));
        }
        Ok(x)
    }

    fn vec3_or(&self, key: &str, default: Vec3) -> Result<Vec3> {
        self.get(key).map_or(Ok(default), |v| self.cx.vec3(v, &self.at(key)))
    }

    fn floats_or<const N: usize>(&self, key: &str, default: [f64; N]) -> Result<[f64; N]> {
        self.get(key).map_or(Ok(default), |v| self.cx.floats::<N>(v, &self.at(key)))
    }

    fn opt_floats<const N: usize>(&self, key: &str) -> Result<Option<[f64; N]>> {
        self.get(key).map(|v| self.cx.floats::<N>(v, &self.at(key))).transpose()
    }

    fn string_or(&self, key: &str, default: &str) -> Result<String> {
        self.get(key).map_or(Ok(default.to_string()), |v| self.cx.string(v, &self.at(key)))
    }

    fn opt_string(&self, key: &str) -> Result<Option<String>> {
        self.get(key).map(|v| self.cx.string(v, &self.at(key))).transpose()
    }

    fn opt_list(&self, key: &str) -> Result<Option<&'a Vec<Value>>> {
        self.get(key).map(|v| self.cx.list(v, &self.at(key))).transpose()
    }
}

// ---------------------------------------------------------------------------
// Model parsers (shared by the reader and by the writer's change detection).

fn parse_beam(cx: &Cx, v: &Value, loc: &str) -> Result<(Beam, BeamMeta)> {
    let o = cx.obj(v, loc)?;
    // dxtbx: "polychromatic" selects the Laue beam; any other (or no) id is monochromatic.
    let kind = match o.get("__id__") {
        Some(Value::String(s)) if s == "polychromatic" => BeamKind::Polychromatic,
        _ => BeamKind::Monochromatic,
    };
    let direction = cx.axis(o.require("direction")?, &o.at("direction"))?;
    let (wavelength, wavelength_range) = match kind {
        BeamKind::Monochromatic => {
            let w = o.finite_f64("wavelength")?;
            if w <= 0.0 {
                return Err(cx.err(&o.at("wavelength"), format!("wavelength must be positive, found {w}")));
            }
            (w, None)
        }
        BeamKind::Polychromatic => {
            let r = cx.floats::<2>(o.require("wavelength_range")?, &o.at("wavelength_range"))?;
            if !(r[0].is_finite() && r[1].is_finite() && r[0] > 0.0 && r[1] >= r[0]) {
                return Err(cx.err(
                    &o.at("wavelength_range"),
                    format!("need 0 < min <= max, found [{}, {}]", r[0], r[1]),
                ));
            }
            (0.5 * (r[0] + r[1]), Some(r))
        }
    };
    let polarization_normal = o.vec3_or("polarization_normal", Vec3::new(0.0, 1.0, 0.0))?;
    if !polarization_normal.iter().all(|c| c.is_finite()) || polarization_normal.norm() == 0.0 {
        return Err(cx.err(&o.at("polarization_normal"), "must be a finite non-zero vector"));
    }
    let polarization_fraction = o.f64_or("polarization_fraction", 0.999)?;
    if !(0.0..=1.0).contains(&polarization_fraction) {
        return Err(cx.err(
            &o.at("polarization_fraction"),
            format!("must lie in [0, 1], found {polarization_fraction}"),
        ));
    }
    let mut s0_at_scan_points = vec![];
    if let Some(list) = o.opt_list("s0_at_scan_points")? {
        for (i, x) in list.iter().enumerate() {
            s0_at_scan_points.push(cx.vec3(x, &format!("{}[{i}]", o.at("s0_at_scan_points")))?);
        }
    }
    let beam = Beam {
        direction,
        wavelength,
        divergence_deg: o.f64_or("divergence", 0.0)?,
        sigma_divergence_deg: o.f64_or("sigma_divergence", 0.0)?,
        polarization_normal,
        polarization_fraction,
        flux: o.f64_or("flux", 0.0)?,
        transmission: o.f64_or("transmission", 1.0)?,
    };
    let meta = BeamMeta {
        kind,
        probe: o.string_or("probe", "x-ray")?,
        sample_to_source_distance: o.f64_or("sample_to_source_distance", 0.0)?,
        wavelength_range,
        s0_at_scan_points,
    };
    Ok((beam, meta))
}

/// A node's local frame; dxtbx keeps the default (identity) frame unless all
/// three keys are present.
fn parse_local_frame(o: &Obj) -> Result<(Vec3, Vec3, Vec3)> {
    if !(o.has("fast_axis") && o.has("slow_axis") && o.has("origin")) {
        return Ok((Vec3::x(), Vec3::y(), Vec3::zeros()));
    }
    let f = o.cx.axis(o.require("fast_axis")?, &o.at("fast_axis"))?;
    let s = o.cx.axis(o.require("slow_axis")?, &o.at("slow_axis"))?;
    let origin = o.cx.finite_vec3(o.require("origin")?, &o.at("origin"))?;
    let cos = f.dot(&s);
    if cos.abs() > ORTHO_TOL {
        return Err(o
            .cx
            .err(&o.loc, format!("fast_axis and slow_axis are not perpendicular (cos = {cos:e})")));
    }
    Ok((f, s, origin))
}

/// A panel with its frame still local to its parent node.
fn parse_panel(cx: &Cx, v: &Value, loc: &str) -> Result<(Panel, PanelMeta)> {
    let o = cx.obj(v, loc)?;
    let (fast, slow, origin) = parse_local_frame(&o)?;
    let image_size = match o.get("image_size") {
        Some(v) => cx.ints::<2>(v, &o.at("image_size"))?,
        None => [0, 0],
    };
    if !image_size.iter().all(|&n| n > 0 && n <= i32::MAX as i64) {
        return Err(cx.err(
            &o.at("image_size"),
            format!("image size must be positive, found [{}, {}]", image_size[0], image_size[1]),
        ));
    }
    let pixel_size = o.floats_or("pixel_size", [0.0, 0.0])?;
    if !pixel_size.iter().all(|&p| p.is_finite() && p > 0.0) {
        return Err(cx.err(
            &o.at("pixel_size"),
            format!("pixel sizes must be positive, found [{}, {}]", pixel_size[0], pixel_size[1]),
        ));
    }
    let mut mask = vec![];
    if let Some(list) = o.opt_list("mask")? {
        for (i, r) in list.iter().enumerate() {
            mask.push(cx.i32s::<4>(r, &format!("{}[{i}]", o.at("mask")))?);
        }
    }
    let mut panel = Panel {
        name: o.string_or("name", "")?,
        panel_type: o.string_or("type", "")?,
        origin,
        fast,
        slow,
        pixel_size,
        image_size: [image_size[0] as usize, image_size[1] as usize],
        trusted_range: o.floats_or("trusted_range", [0.0, 0.0])?,
        thickness: o.f64_or("thickness", 0.0)?,
        mu: o.f64_or("mu", 0.0)?,
        material: o.string_or("material", "")?,
        gain: o.f64_or("gain", 1.0)?,
        pedestal: o.f64_or("pedestal", 0.0)?,
        identifier: o.string_or("identifier", "")?,
        raw_image_offset: match o.get("raw_image_offset") {
            Some(v) => cx.i32s::<2>(v, &o.at("raw_image_offset"))?,
            None => [0, 0],
        },
        mask,
    };
    let mut meta = PanelMeta::default();
    if let Some(st) = o.get("px_mm_strategy") {
        let so = cx.obj(st, &o.at("px_mm_strategy"))?;
        let name = cx.string(so.require("type")?, &so.at("type"))?;
        meta.px_mm_strategy = PxMmStrategy::from_name(&name)
            .ok_or_else(|| cx.err(&so.at("type"), format!("unknown px_mm_strategy `{name}`")))?;
        let parallax = matches!(
            meta.px_mm_strategy,
            PxMmStrategy::ParallaxCorrected | PxMmStrategy::OffsetParallaxCorrected
        );
        if parallax && so.has("mu") && so.has("t0") {
            panel.mu = cx.f64(so.require("mu")?, &so.at("mu"))?;
            panel.thickness = cx.f64(so.require("t0")?, &so.at("t0"))?;
            meta.strategy_has_mu_t0 = true;
        }
    }
    if let Some(p) = o.get("projection_2d") {
        let a = cx.sized(p, 2, &o.at("projection_2d"))?;
        meta.projection_2d = Some(Projection2d {
            rotation: cx.i32s::<4>(&a[0], &format!("{}[0]", o.at("projection_2d")))?,
            translation: cx.i32s::<2>(&a[1], &format!("{}[1]", o.at("projection_2d")))?,
        });
    }
    Ok((panel, meta))
}

/// A hierarchy group's name and local frame.
fn parse_group_header(cx: &Cx, v: &Value, loc: &str) -> Result<(String, Vec3, Vec3, Vec3)> {
    let o = cx.obj(v, loc)?;
    let (f, s, origin) = parse_local_frame(&o)?;
    Ok((o.string_or("name", "")?, f, s, origin))
}

/// Walk a hierarchy group, composing the panels it references into the lab frame.
fn parse_group(
    cx: &Cx,
    v: &Value,
    loc: &str,
    parent: &Frame,
    panels: &mut [Panel],
    used: &mut [bool],
) -> Result<DetectorNode> {
    let (name, f, s, origin) = parse_group_header(cx, v, loc)?;
    let frame = parent.child(&f, &s, &origin);
    let o = cx.obj(v, loc)?;
    let children = cx.list(o.require("children")?, &o.at("children"))?;
    let mut nodes = Vec::with_capacity(children.len());
    for (j, c) in children.iter().enumerate() {
        let cloc = format!("{loc}.children[{j}]");
        let co = cx.obj(c, &cloc)?;
        if let Some(pv) = co.get("panel") {
            let idx = cx.index(pv, &co.at("panel"))?;
            let n = panels.len();
            if idx >= n {
                return Err(cx.err(&co.at("panel"), format!("panel index {idx} out of range ({n} panels)")));
            }
            if used[idx] {
                return Err(cx.err(&co.at("panel"), format!("panel {idx} appears twice in the hierarchy")));
            }
            used[idx] = true;
            let p = &mut panels[idx];
            let lab = frame.child(&p.fast, &p.slow, &p.origin);
            p.fast = lab.fast;
            p.slow = lab.slow;
            p.origin = lab.origin;
            nodes.push(NodeChild::Panel(idx));
        } else {
            nodes.push(NodeChild::Group(parse_group(cx, c, &cloc, &frame, panels, used)?));
        }
    }
    Ok(DetectorNode { name, local_fast: f, local_slow: s, local_origin: origin, children: nodes })
}

fn parse_detector(cx: &Cx, v: &Value, loc: &str) -> Result<(Detector, DetectorMeta)> {
    // Very old files store a detector as a bare list of panels (dxtbx accepts it).
    let (panel_list, hierarchy, ploc) = match v {
        Value::Array(a) => (a, None, loc.to_string()),
        Value::Object(_) => {
            let o = cx.obj(v, loc)?;
            (cx.list(o.require("panels")?, &o.at("panels"))?, o.get("hierarchy"), o.at("panels"))
        }
        _ => return Err(cx.err(loc, format!("expected an object, found {}", kind_of(v)))),
    };
    let mut panels = Vec::with_capacity(panel_list.len());
    let mut metas = Vec::with_capacity(panel_list.len());
    for (i, p) in panel_list.iter().enumerate() {
        let (panel, meta) = parse_panel(cx, p, &format!("{ploc}[{i}]"))?;
        panels.push(panel);
        metas.push(meta);
    }
    let hierarchy = match hierarchy {
        Some(h) => {
            let hloc = format!("{loc}.hierarchy");
            let mut used = vec![false; panels.len()];
            let root = parse_group(cx, h, &hloc, &Frame::identity(), &mut panels, &mut used)?;
            if let Some(i) = used.iter().position(|u| !u) {
                return Err(cx.err(&hloc, format!("panel {i} is not in the hierarchy")));
            }
            Some(root)
        }
        None => None,
    };
    Ok((Detector { panels, hierarchy }, DetectorMeta { panels: metas }))
}

fn parse_crystal(cx: &Cx, v: &Value, loc: &str) -> Result<(Crystal, CrystalMeta)> {
    let o = cx.obj(v, loc)?;
    let a = cx.finite_vec3(o.require("real_space_a")?, &o.at("real_space_a"))?;
    let b = cx.finite_vec3(o.require("real_space_b")?, &o.at("real_space_b"))?;
    let c = cx.finite_vec3(o.require("real_space_c")?, &o.at("real_space_c"))?;
    let det = Mat3::from_columns(&[a, b, c]).determinant();
    // Also false for a determinant that overflowed to infinity.
    let well_formed = det.abs() > 1e-9 * a.norm() * b.norm() * c.norm();
    if !well_formed {
        return Err(cx.err(loc, "real-space vectors are degenerate (zero cell volume)"));
    }
    let hall = cx.string(o.require("space_group_hall_symbol")?, &o.at("space_group_hall_symbol"))?;
    let ml_half = o.opt_f64("ML_half_mosaicity_deg")?;
    let ml_domain = o.opt_f64("ML_domain_size_ang")?;
    if ml_half.is_some() != ml_domain.is_some() {
        return Err(
            cx.err(loc, "ML_half_mosaicity_deg and ML_domain_size_ang must both be numbers or both null")
        );
    }
    let mut crystal = Crystal::from_vectors(a, b, c, &hall);
    crystal.ml_half_mosaicity_deg = ml_half;
    crystal.ml_domain_size_ang = ml_domain;
    crystal.mosaicity = o.opt_f64("mosaicity")?;

    let b_covariance = match o.opt_list("B_covariance")? {
        Some(list) => {
            let bloc = o.at("B_covariance");
            if list.len() != 81 {
                return Err(cx.err(&bloc, format!("expected 81 values (9×9), found {}", list.len())));
            }
            Some(
                list.iter()
                    .enumerate()
                    .map(|(i, x)| cx.f64(x, &format!("{bloc}[{i}]")))
                    .collect::<Result<_>>()?,
            )
        }
        None => None,
    };
    let mut a_at_scan_points = vec![];
    if let Some(list) = o.opt_list("A_at_scan_points")? {
        for (i, x) in list.iter().enumerate() {
            a_at_scan_points.push(cx.floats::<9>(x, &format!("{}[{i}]", o.at("A_at_scan_points")))?);
        }
    }
    let meta = CrystalMeta {
        b_covariance,
        recalculated_unit_cell: o.opt_floats::<6>("recalculated_unit_cell")?,
        recalculated_cell_parameter_sd: o.opt_floats::<6>("recalculated_cell_parameter_sd")?,
        recalculated_cell_volume_sd: o.opt_f64("recalculated_cell_volume_sd")?,
        identified_isoform: o.opt_string("identified_isoform")?,
        a_at_scan_points,
    };
    Ok((crystal, meta))
}

/// An absolute path for a path written in a file whose folder is `base`.
/// URLs (`scheme://...`) are kept as they are.
pub fn resolve_path(s: &str, base: &Path) -> PathBuf {
    if s.contains("://") {
        return PathBuf::from(s);
    }
    let p = Path::new(s);
    let joined = if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
    normalize_lexically(&joined)
}

/// Remove `.` and resolve `..` without touching the file system (Python's normpath).
fn normalize_lexically(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if matches!(out.components().next_back(), Some(Component::Normal(_))) {
                    out.pop();
                } else if !out.has_root() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn parse_imageset(cx: &Cx, v: &Value, loc: &str, base: &Path) -> Result<ImageSetRef> {
    let o = cx.obj(v, loc)?;
    let id = cx.string(o.require("__id__")?, &o.at("__id__"))?;
    let kind = ImageSetKind::from_name(&id)
        .ok_or_else(|| cx.err(&o.at("__id__"), format!("unknown imageset type `{id}`")))?;
    let path_of = |v: &Value, l: &str| -> Result<PathBuf> { Ok(resolve_path(&cx.string(v, l)?, base)) };
    let mut images = vec![];
    let needs_images = matches!(kind, ImageSetKind::ImageSet | ImageSetKind::ImageGrid);
    let list = if needs_images {
        Some(cx.list(o.require("images")?, &o.at("images"))?)
    } else {
        o.opt_list("images")?
    };
    for (i, x) in list.into_iter().flatten().enumerate() {
        images.push(path_of(x, &format!("{}[{i}]", o.at("images")))?);
    }
    let template = match kind {
        ImageSetKind::ImageSequence => Some(path_of(o.require("template")?, &o.at("template"))?),
        _ => None,
    };
    let single_file_indices = match o.opt_list("single_file_indices")? {
        Some(list) => {
            let l = o.at("single_file_indices");
            let ix = list
                .iter()
                .enumerate()
                .map(|(i, x)| cx.index(x, &format!("{l}[{i}]")))
                .collect::<Result<Vec<_>>>()?;
            if needs_images && ix.len() != images.len() {
                return Err(cx.err(&l, format!("{} indices for {} images", ix.len(), images.len())));
            }
            Some(ix)
        }
        None => None,
    };
    let grid_size = match kind {
        ImageSetKind::ImageGrid => {
            let g = cx.ints::<2>(o.require("grid_size")?, &o.at("grid_size"))?;
            if g.iter().any(|&n| n < 0) {
                return Err(cx.err(&o.at("grid_size"), "grid size must be non-negative"));
            }
            Some([g[0] as usize, g[1] as usize])
        }
        _ => None,
    };
    // Lookups: null, "" (old files) or absent all mean "none".
    let lookup = |key: &str| -> Result<Option<PathBuf>> {
        match o.get(key) {
            None => Ok(None),
            Some(v) => {
                let s = cx.string(v, &o.at(key))?;
                Ok(if s.is_empty() { None } else { Some(resolve_path(&s, base)) })
            }
        }
    };
    let params = match o.get("params") {
        None => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            return Err(cx.err(&o.at("params"), format!("expected an object, found {}", kind_of(other))));
        }
    };
    Ok(ImageSetRef {
        kind,
        images,
        template,
        single_file_indices,
        grid_size,
        mask: lookup("mask")?,
        gain: lookup("gain")?,
        pedestal: lookup("pedestal")?,
        dx: lookup("dx")?,
        dy: lookup("dy")?,
        params,
    })
}

// ---------------------------------------------------------------------------
// Decoding a whole document.

/// Absolute folder of a file path (no file-system access).
fn folder_of(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    normalize_lexically(abs.parent().unwrap_or(Path::new("/")))
}

fn plural(name: &str, n: usize) -> String {
    let base = name.replace('_', " ");
    if n == 1 {
        format!("{n} {base}")
    } else {
        format!("{n} {base}s")
    }
}

fn decode(doc: Value, path: &Path, select: Option<usize>) -> Result<ExperimentList> {
    let cx = Cx { path };
    let base = folder_of(path);
    let Value::Object(mut top) = doc else {
        return Err(Error::file(
            path,
            format!("not a DIALS experiment list: the top level is {}", kind_of(&doc)),
        ));
    };
    match top.get("__id__") {
        None => {}
        Some(Value::String(s)) if s == "ExperimentList" => {}
        Some(other) => {
            return Err(Error::file(
                path,
                format!("not a DIALS experiment list: __id__ is {}", kind_of(other)),
            ));
        }
    }
    let experiments = match top.get_mut("experiment").map(Value::take) {
        Some(Value::Array(a)) => a,
        None => return Err(Error::file(path, "not a DIALS experiment list: no `experiment` list")),
        Some(other) => {
            return Err(cx.err("experiment", format!("expected a list, found {}", kind_of(&other))))
        }
    };
    // Take each pool out of the document (leaving null in place to keep key order).
    let mut pools: Vec<Vec<Arc<Value>>> = Vec::with_capacity(POOLS.len());
    for name in POOLS {
        let pool = match top.get_mut(name).map(Value::take) {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(a)) => a.into_iter().map(Arc::new).collect(),
            Some(other) => return Err(cx.err(name, format!("expected a list, found {}", kind_of(&other)))),
        };
        pools.push(pool);
    }
    let pool = |name: &str| &pools[POOLS.iter().position(|p| *p == name).unwrap_or(0)];
    if let Some(i) = select {
        if i >= experiments.len() {
            return Err(Error::file(
                path,
                format!("experiment index {i} out of range ({})", plural("experiment", experiments.len())),
            ));
        }
    }
    let file = Arc::new(path.to_path_buf());
    let mut beams: Vec<Option<(Beam, BeamMeta)>> = vec![None; pool("beam").len()];
    let mut detectors: Vec<Option<(Detector, DetectorMeta)>> = vec![None; pool("detector").len()];
    let mut crystals: Vec<Option<(Crystal, CrystalMeta)>> = vec![None; pool("crystal").len()];
    let mut imagesets: Vec<Option<ImageSetRef>> = vec![None; pool("imageset").len()];

    let mut out = Vec::new();
    for (i, ev) in experiments.into_iter().enumerate() {
        if select.is_some_and(|s| s != i) {
            continue;
        }
        let eloc = format!("experiment[{i}]");
        let eo = cx.obj(&ev, &eloc)?;
        let identifier = eo.string_or("identifier", "")?;
        let refer = |name: &str| -> Result<Option<ModelOrigin>> {
            let Some(v) = eo.get(name) else { return Ok(None) };
            let loc = eo.at(name);
            if let (Value::String(s), None) = (v, value_as_f64(v)) {
                return Err(cx.err(
                    &loc,
                    format!("refers to the model file {s:?}: legacy file references are not supported (inline the model)"),
                ));
            }
            let idx = cx
                .index(v, &loc)
                .map_err(|_| cx.err(&loc, format!("expected a model index, found {}", kind_of(v))))?;
            let p = pool(name);
            if idx >= p.len() {
                return Err(cx.err(&loc, format!("index {idx} out of range ({})", plural(name, p.len()))));
            }
            Ok(Some(ModelOrigin { index: idx, raw: p[idx].clone() }))
        };
        let origins: Vec<Option<ModelOrigin>> = POOLS.iter().map(|n| refer(n)).collect::<Result<_>>()?;
        let [beam_o, det_o, gonio_o, scan_o, xtal_o, prof_o, scal_o, iset_o] =
            <[Option<ModelOrigin>; 8]>::try_from(origins).map_err(|_| Error::msg("internal: pool count"))?;

        let mut e = Experiment {
            identifier,
            beam: None,
            beam_meta: BeamMeta::default(),
            detector: None,
            detector_meta: DetectorMeta::default(),
            crystal: None,
            crystal_meta: CrystalMeta::default(),
            imageset: None,
            goniometer: gonio_o.as_ref().map(|o| (*o.raw).clone()),
            scan: scan_o.as_ref().map(|o| (*o.raw).clone()),
            profile: prof_o.as_ref().map(|o| (*o.raw).clone()),
            scaling_model: scal_o.as_ref().map(|o| (*o.raw).clone()),
            provenance: Provenance::default(),
        };
        if let Some(o) = &beam_o {
            if beams[o.index].is_none() {
                beams[o.index] = Some(parse_beam(&cx, &o.raw, &format!("beam[{}]", o.index))?);
            }
            if let Some((b, m)) = beams[o.index].clone() {
                e.beam = Some(b);
                e.beam_meta = m;
            }
        }
        if let Some(o) = &det_o {
            if detectors[o.index].is_none() {
                detectors[o.index] = Some(parse_detector(&cx, &o.raw, &format!("detector[{}]", o.index))?);
            }
            if let Some((d, m)) = detectors[o.index].clone() {
                e.detector = Some(d);
                e.detector_meta = m;
            }
        }
        if let Some(o) = &xtal_o {
            if crystals[o.index].is_none() {
                crystals[o.index] = Some(parse_crystal(&cx, &o.raw, &format!("crystal[{}]", o.index))?);
            }
            if let Some((c, m)) = crystals[o.index].clone() {
                e.crystal = Some(c);
                e.crystal_meta = m;
            }
        }
        if let Some(o) = &iset_o {
            if imagesets[o.index].is_none() {
                imagesets[o.index] =
                    Some(parse_imageset(&cx, &o.raw, &format!("imageset[{}]", o.index), &base)?);
            }
            e.imageset = imagesets[o.index].clone();
        }
        e.provenance = Provenance {
            file: Some(file.clone()),
            index: i,
            raw: Some(Arc::new(ev)),
            beam: beam_o,
            detector: det_o,
            crystal: xtal_o,
            imageset: iset_o,
            goniometer: gonio_o,
            scan: scan_o,
            profile: prof_o,
            scaling_model: scal_o,
        };
        out.push(e);
    }
    Ok(ExperimentList { experiments: out, top: Some(top), path: Some(path.to_path_buf()) })
}

// ---------------------------------------------------------------------------
// Encoding.

/// Fields of a model in dxtbx's key order; `None` = key absent.
type Fields = Vec<(&'static str, Option<Value>)>;

fn vec_value(v: &Vec3) -> Value {
    Value::Array(v.iter().map(|x| f64_value(*x)).collect())
}

fn floats_value(v: &[f64]) -> Value {
    Value::Array(v.iter().map(|x| f64_value(*x)).collect())
}

fn path_value(p: &Path) -> Value {
    Value::String(p.to_string_lossy().into_owned())
}

/// Apply the changed fields to the original object (keeping its other keys,
/// their order and the text form of unchanged values), or build a fresh object.
fn patch(raw: Option<&Value>, cur: Fields, orig: Option<Fields>) -> Map<String, Value> {
    if let (Some(Value::Object(raw)), Some(orig)) = (raw, orig) {
        let mut m = raw.clone();
        for (k, v) in cur {
            let before = orig.iter().find(|(ok, _)| *ok == k).and_then(|(_, ov)| ov.as_ref());
            if before == v.as_ref() {
                continue;
            }
            match v {
                Some(v) => {
                    m.insert(k.to_string(), v);
                }
                None => {
                    m.shift_remove(k);
                }
            }
        }
        m
    } else {
        cur.into_iter().filter_map(|(k, v)| v.map(|v| (k.to_string(), v))).collect()
    }
}

fn beam_fields(b: &Beam, m: &BeamMeta) -> Fields {
    let poly = m.kind == BeamKind::Polychromatic;
    vec![
        ("__id__", Some(Value::from(if poly { "polychromatic" } else { "monochromatic" }))),
        ("direction", Some(vec_value(&b.direction))),
        ("wavelength", (!poly).then(|| f64_value(b.wavelength))),
        ("wavelength_range", poly.then(|| floats_value(&m.wavelength_range.unwrap_or([b.wavelength; 2])))),
        ("divergence", Some(f64_value(b.divergence_deg))),
        ("sigma_divergence", Some(f64_value(b.sigma_divergence_deg))),
        ("polarization_normal", Some(vec_value(&b.polarization_normal))),
        ("polarization_fraction", Some(f64_value(b.polarization_fraction))),
        ("flux", Some(f64_value(b.flux))),
        ("transmission", Some(f64_value(b.transmission))),
        ("probe", Some(Value::from(m.probe.as_str()))),
        ("sample_to_source_distance", Some(f64_value(m.sample_to_source_distance))),
        (
            "s0_at_scan_points",
            (!m.s0_at_scan_points.is_empty())
                .then(|| Value::Array(m.s0_at_scan_points.iter().map(vec_value).collect())),
        ),
    ]
}

fn encode_beam(b: &Beam, m: &BeamMeta, origin: Option<&ModelOrigin>) -> Value {
    let raw = origin.map(|o| &*o.raw);
    let orig = raw.and_then(|r| parse_beam(&Cx::quiet(), r, "").ok()).map(|(b0, m0)| beam_fields(&b0, &m0));
    Value::Object(patch(raw, beam_fields(b, m), orig))
}

fn strategy_value(p: &Panel, m: &PanelMeta) -> Value {
    let mut s = Map::new();
    s.insert("type".into(), Value::from(m.px_mm_strategy.name()));
    let parallax =
        matches!(m.px_mm_strategy, PxMmStrategy::ParallaxCorrected | PxMmStrategy::OffsetParallaxCorrected);
    if m.strategy_has_mu_t0 && parallax {
        s.insert("mu".into(), f64_value(p.mu));
        s.insert("t0".into(), f64_value(p.thickness));
    }
    Value::Object(s)
}

fn panel_fields(p: &Panel, m: &PanelMeta, local: (Vec3, Vec3, Vec3)) -> Fields {
    let ints = |v: &[i32]| Value::Array(v.iter().map(|&i| Value::from(i)).collect());
    vec![
        ("name", Some(Value::from(p.name.as_str()))),
        ("type", Some(Value::from(p.panel_type.as_str()))),
        ("fast_axis", Some(vec_value(&local.0))),
        ("slow_axis", Some(vec_value(&local.1))),
        ("origin", Some(vec_value(&local.2))),
        ("raw_image_offset", Some(ints(&p.raw_image_offset))),
        ("image_size", Some(Value::Array(p.image_size.iter().map(|&n| Value::from(n)).collect()))),
        ("pixel_size", Some(floats_value(&p.pixel_size))),
        ("trusted_range", Some(floats_value(&p.trusted_range))),
        ("thickness", Some(f64_value(p.thickness))),
        ("material", Some(Value::from(p.material.as_str()))),
        ("mu", Some(f64_value(p.mu))),
        ("identifier", Some(Value::from(p.identifier.as_str()))),
        ("mask", Some(Value::Array(p.mask.iter().map(|r| ints(r)).collect()))),
        ("gain", Some(f64_value(p.gain))),
        ("pedestal", Some(f64_value(p.pedestal))),
        ("px_mm_strategy", Some(strategy_value(p, m))),
        (
            "projection_2d",
            m.projection_2d.map(|pr| Value::Array(vec![ints(&pr.rotation), ints(&pr.translation)])),
        ),
    ]
}

fn close(a: &Vec3, b: &Vec3) -> bool {
    (a - b).norm() <= 1e-12 * a.norm().max(1.0)
}

/// The lab frame of every panel's parent node in a hierarchy.
fn parent_frames(
    node: &DetectorNode,
    parent: &Frame,
    out: &mut [Option<Frame>],
) -> std::result::Result<(), String> {
    let frame = parent.child(&node.local_fast, &node.local_slow, &node.local_origin);
    for c in &node.children {
        match c {
            NodeChild::Panel(i) => {
                let n = out.len();
                let slot = out.get_mut(*i).ok_or_else(|| format!("hierarchy references panel {i} of {n}"))?;
                if slot.is_some() {
                    return Err(format!("hierarchy references panel {i} twice"));
                }
                *slot = Some(frame);
            }
            NodeChild::Group(g) => parent_frames(g, &frame, out)?,
        }
    }
    Ok(())
}

fn group_fields(name: &str, f: &Vec3, s: &Vec3, o: &Vec3) -> Fields {
    vec![
        ("name", Some(Value::from(name))),
        ("fast_axis", Some(vec_value(f))),
        ("slow_axis", Some(vec_value(s))),
        ("origin", Some(vec_value(o))),
    ]
}

/// A group as dxtbx writes a fresh one: the panel keys (mostly meaningless) plus children.
fn fresh_group(node: &DetectorNode) -> Map<String, Value> {
    let mut m = Map::new();
    let zero2 = || Value::Array(vec![Value::from(0), Value::from(0)]);
    let fzero2 = || floats_value(&[0.0, 0.0]);
    m.insert("name".into(), Value::from(node.name.as_str()));
    m.insert("type".into(), Value::from(""));
    m.insert("fast_axis".into(), vec_value(&node.local_fast));
    m.insert("slow_axis".into(), vec_value(&node.local_slow));
    m.insert("origin".into(), vec_value(&node.local_origin));
    m.insert("raw_image_offset".into(), zero2());
    m.insert("image_size".into(), zero2());
    m.insert("pixel_size".into(), fzero2());
    m.insert("trusted_range".into(), fzero2());
    m.insert("thickness".into(), f64_value(0.0));
    m.insert("material".into(), Value::from(""));
    m.insert("mu".into(), f64_value(0.0));
    m.insert("identifier".into(), Value::from(""));
    m.insert("mask".into(), Value::Array(vec![]));
    m.insert("gain".into(), f64_value(1.0));
    m.insert("pedestal".into(), f64_value(0.0));
    m.insert("px_mm_strategy".into(), strategy_value(&Panel::default(), &PanelMeta::default()));
    m
}

fn encode_group(node: &DetectorNode, raw: Option<&Value>) -> Value {
    let raw = raw.filter(|r| r.is_object() && r.get("panel").is_none());
    let orig = raw
        .and_then(|r| parse_group_header(&Cx::quiet(), r, "").ok())
        .map(|(n, f, s, o)| group_fields(&n, &f, &s, &o));
    let cur = group_fields(&node.name, &node.local_fast, &node.local_slow, &node.local_origin);
    let mut m = match orig {
        Some(orig) => patch(raw, cur, Some(orig)),
        None => fresh_group(node),
    };
    let raw_children = raw.and_then(|r| r.get("children")).and_then(|c| c.as_array());
    let children = node
        .children
        .iter()
        .enumerate()
        .map(|(j, c)| {
            let rc = raw_children.and_then(|a| a.get(j));
            match c {
                NodeChild::Panel(i) => match rc {
                    Some(rc) if rc.get("panel").and_then(|p| p.as_u64()) == Some(*i as u64) => rc.clone(),
                    _ => serde_json::json!({ "panel": i }),
                },
                NodeChild::Group(g) => encode_group(g, rc),
            }
        })
        .collect();
    m.insert("children".into(), Value::Array(children));
    Value::Object(m)
}

fn encode_detector(
    det: &Detector,
    meta: &DetectorMeta,
    origin: Option<&ModelOrigin>,
) -> std::result::Result<Value, String> {
    let n = det.panels.len();
    let mut parents: Vec<Option<Frame>> = vec![None; n];
    if let Some(root) = &det.hierarchy {
        parent_frames(root, &Frame::identity(), &mut parents)?;
        if let Some(i) = parents.iter().position(|p| p.is_none()) {
            return Err(format!("panel {i} is not in the detector hierarchy"));
        }
    }
    let raw = origin.map(|o| &*o.raw);
    let (raw_panels, raw_hierarchy) = match raw {
        Some(Value::Array(a)) => (Some(a), None),
        Some(Value::Object(m)) => (m.get("panels").and_then(|p| p.as_array()), m.get("hierarchy")),
        _ => (None, None),
    };
    let mut panels = Vec::with_capacity(n);
    for (i, p) in det.panels.iter().enumerate() {
        let pm = meta.panel(i);
        let parent = parents[i].unwrap_or_else(Frame::identity);
        let rp = raw_panels.and_then(|a| a.get(i));
        let orig = rp.and_then(|r| parse_panel(&Cx::quiet(), r, "").ok());
        let local = match &orig {
            Some((op, _))
                if {
                    let lab = parent.child(&op.fast, &op.slow, &op.origin);
                    close(&lab.fast, &p.fast) && close(&lab.slow, &p.slow) && close(&lab.origin, &p.origin)
                } =>
            {
                (op.fast, op.slow, op.origin)
            }
            _ => parent.to_local(&p.fast, &p.slow, &p.origin),
        };
        let orig_fields = orig.map(|(op, om)| panel_fields(&op, &om, (op.fast, op.slow, op.origin)));
        panels.push(Value::Object(patch(rp, panel_fields(p, &pm, local), orig_fields)));
    }
    if matches!(raw, Some(Value::Array(_))) && det.hierarchy.is_none() {
        return Ok(Value::Array(panels));
    }
    let mut out = match raw {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    out.insert("panels".into(), Value::Array(panels));
    match &det.hierarchy {
        Some(root) => {
            out.insert("hierarchy".into(), encode_group(root, raw_hierarchy));
        }
        // An old file without a hierarchy stays without one; otherwise write the
        // identity root holding every panel, as dxtbx always does.
        None if matches!(raw, Some(Value::Object(m)) if !m.contains_key("hierarchy")) => {}
        None => {
            let root = DetectorNode {
                name: String::new(),
                local_fast: Vec3::x(),
                local_slow: Vec3::y(),
                local_origin: Vec3::zeros(),
                children: (0..n).map(NodeChild::Panel).collect(),
            };
            out.insert("hierarchy".into(), encode_group(&root, None));
        }
    }
    Ok(Value::Object(out))
}

fn crystal_fields(c: &Crystal, m: &CrystalMeta) -> Fields {
    vec![
        ("__id__", Some(Value::from("crystal"))),
        ("real_space_a", Some(vec_value(&c.a()))),
        ("real_space_b", Some(vec_value(&c.b()))),
        ("real_space_c", Some(vec_value(&c.c()))),
        ("space_group_hall_symbol", Some(Value::from(c.space_group_hall.as_str()))),
        ("identified_isoform", m.identified_isoform.as_ref().map(|s| Value::from(s.as_str()))),
        (
            "A_at_scan_points",
            (!m.a_at_scan_points.is_empty())
                .then(|| Value::Array(m.a_at_scan_points.iter().map(|a| floats_value(a)).collect())),
        ),
        ("B_covariance", m.b_covariance.as_ref().map(|v| floats_value(v))),
        ("recalculated_unit_cell", m.recalculated_unit_cell.as_ref().map(|v| floats_value(v))),
        (
            "recalculated_cell_parameter_sd",
            m.recalculated_cell_parameter_sd.as_ref().map(|v| floats_value(v)),
        ),
        ("recalculated_cell_volume_sd", m.recalculated_cell_volume_sd.map(f64_value)),
        ("mosaicity", c.mosaicity.map(f64_value)),
        ("ML_half_mosaicity_deg", c.ml_half_mosaicity_deg.map(f64_value)),
        ("ML_domain_size_ang", c.ml_domain_size_ang.map(f64_value)),
    ]
}

fn encode_crystal(c: &Crystal, m: &CrystalMeta, origin: Option<&ModelOrigin>) -> Value {
    let raw = origin.map(|o| &*o.raw);
    let orig =
        raw.and_then(|r| parse_crystal(&Cx::quiet(), r, "").ok()).map(|(c0, m0)| crystal_fields(&c0, &m0));
    Value::Object(patch(raw, crystal_fields(c, m), orig))
}

fn imageset_fields(s: &ImageSetRef) -> Fields {
    let lookup = |p: &Option<PathBuf>| Some(p.as_deref().map_or(Value::Null, path_value));
    let has_images = matches!(s.kind, ImageSetKind::ImageSet | ImageSetKind::ImageGrid);
    vec![
        ("__id__", Some(Value::from(s.kind.name()))),
        ("images", has_images.then(|| Value::Array(s.images.iter().map(|p| path_value(p)).collect()))),
        ("template", s.template.as_deref().map(path_value)),
        ("grid_size", s.grid_size.map(|g| Value::Array(vec![Value::from(g[0]), Value::from(g[1])]))),
        (
            "single_file_indices",
            s.single_file_indices
                .as_ref()
                .map(|ix| Value::Array(ix.iter().map(|&i| Value::from(i)).collect())),
        ),
        ("mask", lookup(&s.mask)),
        ("gain", lookup(&s.gain)),
        ("pedestal", lookup(&s.pedestal)),
        ("dx", lookup(&s.dx)),
        ("dy", lookup(&s.dy)),
        ("params", Some(Value::Object(s.params.clone()))),
    ]
}

/// `out_dir` is the folder of the file being written: an original relative
/// path is kept only if it resolves from there to the same file.
fn encode_imageset(s: &ImageSetRef, origin: Option<&ModelOrigin>, out_dir: &Path) -> Value {
    let raw = origin.map(|o| &*o.raw);
    let orig =
        raw.and_then(|r| parse_imageset(&Cx::quiet(), r, "", out_dir).ok()).map(|s0| imageset_fields(&s0));
    Value::Object(patch(raw, imageset_fields(s), orig))
}

/// Where a model came from: its source file and its index in that file's pool.
type PoolKey = (Option<Arc<PathBuf>>, usize);

/// A model pool being rebuilt: entries in order of first reference.
#[derive(Default)]
struct Pool {
    entries: Vec<(Option<PoolKey>, Value)>,
}

impl Pool {
    /// Index of an equal entry from the same origin, or of a new entry. Equal
    /// models from different pool entries stay apart (300 identical beams in a
    /// file stay 300 beams).
    fn intern(&mut self, origin: Option<PoolKey>, v: Value) -> usize {
        if let Some(j) = self.entries.iter().position(|(o, e)| *o == origin && *e == v) {
            return j;
        }
        self.entries.push((origin, v));
        self.entries.len() - 1
    }

    fn into_value(self) -> Value {
        Value::Array(self.entries.into_iter().map(|(_, v)| v).collect())
    }
}

fn encode(experiments: &[Experiment], top: Option<&Map<String, Value>>, out_path: &Path) -> Result<Value> {
    let out_dir = folder_of(out_path);
    let mut pools: Vec<Pool> = POOLS.iter().map(|_| Pool::default()).collect();
    let mut exps = Vec::with_capacity(experiments.len());
    let mut det_cache: Vec<(Option<PoolKey>, Detector, DetectorMeta, Value)> = vec![];
    for (k, e) in experiments.iter().enumerate() {
        let pv = &e.provenance;
        let mut eo = match pv.raw.as_deref() {
            Some(Value::Object(m)) => m.clone(),
            _ => {
                let mut m = Map::new();
                m.insert("__id__".into(), Value::from("Experiment"));
                m
            }
        };
        // Absent and null identifiers read as "": only a changed value is written.
        let old_id = match eo.get("identifier") {
            Some(Value::String(s)) => s.as_str(),
            _ => "",
        };
        if pv.raw.is_none() || old_id != e.identifier {
            eo.insert("identifier".into(), Value::from(e.identifier.as_str()));
        }
        // Pool key: (source file, index in its pool); models built in memory have none.
        let idx = |o: &Option<ModelOrigin>| o.as_ref().map(|o| (pv.file.clone(), o.index));
        let models: [(Option<Value>, Option<PoolKey>); 8] = [
            (e.beam.as_ref().map(|b| encode_beam(b, &e.beam_meta, pv.beam.as_ref())), idx(&pv.beam)),
            (
                match &e.detector {
                    Some(d) => {
                        // Many experiments share one big detector: encode each distinct one once.
                        let key = idx(&pv.detector);
                        let hit = det_cache
                            .iter()
                            .find(|(k, d0, m0, _)| *k == key && d0 == d && *m0 == e.detector_meta)
                            .map(|c| c.3.clone());
                        match hit {
                            Some(v) => Some(v),
                            None => {
                                let v = encode_detector(d, &e.detector_meta, pv.detector.as_ref()).map_err(
                                    |m| Error::file(out_path, format!("experiment {k}: detector: {m}")),
                                )?;
                                det_cache.push((key, d.clone(), e.detector_meta.clone(), v.clone()));
                                Some(v)
                            }
                        }
                    }
                    None => None,
                },
                idx(&pv.detector),
            ),
            (e.goniometer.clone(), idx(&pv.goniometer)),
            (e.scan.clone(), idx(&pv.scan)),
            (
                e.crystal.as_ref().map(|c| encode_crystal(c, &e.crystal_meta, pv.crystal.as_ref())),
                idx(&pv.crystal),
            ),
            (e.profile.clone(), idx(&pv.profile)),
            (e.scaling_model.clone(), idx(&pv.scaling_model)),
            (
                e.imageset.as_ref().map(|s| encode_imageset(s, pv.imageset.as_ref(), &out_dir)),
                idx(&pv.imageset),
            ),
        ];
        for ((name, pool), (value, origin)) in POOLS.iter().zip(pools.iter_mut()).zip(models) {
            match value {
                Some(v) => {
                    eo.insert(name.to_string(), Value::from(pool.intern(origin, v)));
                }
                None => {
                    eo.shift_remove(*name);
                }
            }
        }
        exps.push(Value::Object(eo));
    }
    let mut pools: Vec<Option<Value>> = pools.into_iter().map(|p| Some(p.into_value())).collect();
    let mut take = |name: &str| POOLS.iter().position(|p| *p == name).and_then(|i| pools[i].take());
    let mut out = Map::new();
    let mut exps = Some(Value::Array(exps));
    match top {
        Some(t) => {
            for (k, v) in t {
                if k == "experiment" {
                    out.insert(k.clone(), exps.take().unwrap_or(Value::Array(vec![])));
                } else if POOLS.contains(&k.as_str()) {
                    out.insert(k.clone(), take(k).unwrap_or(Value::Array(vec![])));
                } else {
                    out.insert(k.clone(), v.clone());
                }
            }
            if let Some(e) = exps.take() {
                out.insert("experiment".into(), e);
            }
            for name in TOP_ORDER {
                if let Some(v) = take(name) {
                    if v.as_array().is_some_and(|a| !a.is_empty()) {
                        out.insert(name.into(), v);
                    }
                }
            }
        }
        None => {
            out.insert("__id__".into(), Value::from("ExperimentList"));
            out.insert("experiment".into(), exps.take().unwrap_or(Value::Array(vec![])));
            for name in TOP_ORDER {
                out.insert(name.into(), take(name).unwrap_or(Value::Array(vec![])));
            }
        }
    }
    Ok(Value::Object(out))
}

/// Write `bytes` to `path.tmp-<pid>` and rename it over `path`.
pub(crate) fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().ok_or_else(|| Error::file(path, "not a file path"))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nonfinite_tokens_outside_strings_only() {
        let text =
            br#"{"a": NaN, "b": [Infinity, -Infinity, 1.0], "s": "NaN \"Infinity\" \\", "t": "-Infinity"}"#;
        let v: Value = serde_json::from_slice(&replace_nonfinite_tokens(text)).unwrap();
        assert!(value_as_f64(&v["a"]).unwrap().is_nan());
        assert_eq!(value_as_f64(&v["b"][0]), Some(f64::INFINITY));
        assert_eq!(value_as_f64(&v["b"][1]), Some(f64::NEG_INFINITY));
        assert_eq!(v["s"], "NaN \"Infinity\" \\");
        assert_eq!(v["t"], "-Infinity");
        // Untouched input is not copied.
        assert!(matches!(replace_nonfinite_tokens(b"{\"a\": 1}"), std::borrow::Cow::Borrowed(_)));
        // Written back as bare tokens, strings unchanged.
        let out = to_python_json(&v);
        assert!(out.contains("\"a\": NaN,") && out.contains("    Infinity,\n    -Infinity,"));
        assert!(out.contains(r#""s": "NaN \"Infinity\" \\","#) && out.contains(r#""t": "-Infinity""#));
    }

    #[test]
    fn python_layout() {
        let v = json!({"a": [], "b": {}, "c": [1, 2.5, -0.0], "d": {"e": null, "f": "x\u{e9}"}});
        assert_eq!(to_python_json(&json!("q\"\\\n\u{1}\u{1F600}")), r#""q\"\\\n\u0001\ud83d\ude00""#);
        let want = "{\n  \"a\": [],\n  \"b\": {},\n  \"c\": [\n    1,\n    2.5,\n    -0.0\n  ],\n  \"d\": {\n    \"e\": null,\n    \"f\": \"x\\u00e9\"\n  }\n}";
        assert_eq!(to_python_json(&v), want);
        assert_eq!(f64_value(f64::NAN), Value::String(NONFINITE_NAN.into()));
        assert_eq!(f64_value(f64::NEG_INFINITY), Value::String(NONFINITE_NEG_INF.into()));
        assert!(json_values_equal(&json!([1, f64_value(f64::NAN)]), &json!([1.0, NONFINITE_NAN])));
        assert!(!json_values_equal(&json!([1]), &json!([1.5])));
    }

    #[test]
    fn paths_resolve_against_the_folder() {
        let base = Path::new("/data/run/expts");
        assert_eq!(resolve_path("../img/x.cbf", base), PathBuf::from("/data/run/img/x.cbf"));
        assert_eq!(resolve_path("./x.h5", base), PathBuf::from("/data/run/expts/x.h5"));
        assert_eq!(resolve_path("/abs/./y.h5", base), PathBuf::from("/abs/y.h5"));
        assert_eq!(resolve_path("/../z", base), PathBuf::from("/z"));
        assert_eq!(resolve_path("https://host/a/../b", base), PathBuf::from("https://host/a/../b"));
    }

    #[test]
    fn patch_keeps_unchanged_keys_verbatim() {
        let raw = json!({"x": 1, "keep": "me", "y": 2.0});
        let orig: Fields = vec![("x", Some(json!(1.0))), ("y", Some(json!(2.0))), ("z", None)];
        let cur: Fields = vec![("x", Some(json!(1.0))), ("y", Some(json!(3.0))), ("z", Some(json!(4)))];
        let m = patch(Some(&raw), cur, Some(orig));
        assert_eq!(Value::Object(m), json!({"x": 1, "keep": "me", "y": 3.0, "z": 4}));
        let removed = patch(Some(&raw), vec![("x", None)], Some(vec![("x", Some(json!(1)))]));
        assert_eq!(removed.keys().collect::<Vec<_>>(), vec!["keep", "y"]);
    }
}
