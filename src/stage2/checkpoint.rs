//! Checkpoints: everything needed to continue a stage-2 run exactly.
//!
//! # What a checkpoint holds
//! * the L-BFGS-B [`State`] at the last iteration boundary at or before the
//!   checkpoint's evaluation N, plus the **journal** of the evaluations made
//!   since that boundary (x, f, g). Resuming restores the state and replays the
//!   journal (each replayed x must equal the recorded one bit for bit), so the
//!   continued run is the uninterrupted one: same evaluations, same result
//!   (the target is deterministic, see [`super::target`]);
//! * the traces of the evaluations since the previous checkpoint, x at N and
//!   the curvature at x (the checkpoint's outputs), so the outputs of a
//!   checkpoint can be (re)written without recomputing anything;
//! * a fingerprint of the problem (shots, parameters, settings): a checkpoint
//!   of another problem is refused.
//!
//! # File
//! `OUT/checkpoints/<tag>_eval<N>.ckpt`, little-endian: magic `DBRS2CKP`,
//! format version (u32), fingerprint (32 bytes), then the fields in order
//! (vectors as u64 length + values), then the SHA-256 of everything before
//! it. Written atomically (tmp + rename); the two most recent are kept. A
//! truncated or altered file fails its checksum and is skipped with a warning
//! in favour of the previous one.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{io_err, Error, Result};
use crate::refine::lbfgsb::{MemoryState, State};
use crate::store::atomic::write_replace;

const MAGIC: &[u8; 8] = b"DBRS2CKP";
const VERSION: u32 = 1;
/// Checkpoints kept on disk.
const KEEP: usize = 2;

/// One evaluation as the optimiser saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct JournalEntry {
    pub x: Vec<f64>,
    pub f: f64,
    pub g: Vec<f64>,
}

/// One row of the convergence log (`traces`, shot_id null).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TracePoint {
    /// 0-based evaluation count.
    pub eval: u32,
    pub f: f64,
    pub sigz: f64,
    pub grad_norm: f64,
    /// Seconds since the refinement started (across restarts).
    pub time: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub fingerprint: [u8; 32],
    /// Evaluations done (N).
    pub n_eval: u64,
    /// Seconds of refinement up to N.
    pub elapsed: f64,
    pub state: State,
    pub journal: Vec<JournalEntry>,
    pub traces: Vec<TracePoint>,
    /// x at evaluation N and the curvature there (one value per Fhkl parameter).
    pub x: Vec<f64>,
    pub h: Vec<f64>,
}

struct W(Vec<u8>);

impl W {
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn vec(&mut self, v: &[f64]) {
        self.u64(v.len() as u64);
        for &x in v {
            self.f64(x);
        }
    }
    fn vecs(&mut self, v: &[Vec<f64>]) {
        self.u64(v.len() as u64);
        for x in v {
            self.vec(x);
        }
    }
}

struct R<'a> {
    b: &'a [u8],
    pos: usize,
}

impl R<'_> {
    fn take(&mut self, n: usize) -> std::result::Result<&[u8], String> {
        if self.b.len() - self.pos < n {
            return Err(format!("truncated at byte {}", self.pos));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn f64(&mut self) -> std::result::Result<f64, String> {
        Ok(f64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn len(&mut self, elem: usize) -> std::result::Result<usize, String> {
        let n = self.u64()?;
        if n > ((self.b.len() - self.pos) / elem) as u64 {
            return Err(format!("length {n} at byte {} exceeds the file", self.pos));
        }
        Ok(n as usize)
    }
    fn vec(&mut self) -> std::result::Result<Vec<f64>, String> {
        let n = self.len(8)?;
        (0..n).map(|_| self.f64()).collect()
    }
    fn vecs(&mut self) -> std::result::Result<Vec<Vec<f64>>, String> {
        let n = self.len(8)?;
        (0..n).map(|_| self.vec()).collect()
    }
}

impl Checkpoint {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = W(Vec::new());
        w.0.extend_from_slice(MAGIC);
        w.u32(VERSION);
        w.0.extend_from_slice(&self.fingerprint);
        w.u64(self.n_eval);
        w.f64(self.elapsed);
        let s = &self.state;
        w.vec(&s.x);
        w.f64(s.f);
        w.vec(&s.g);
        w.u64(s.n_iter as u64);
        w.u64(s.n_eval as u64);
        w.f64(s.proj_grad_norm);
        let m = &s.memory;
        w.vecs(&m.s);
        w.vecs(&m.y);
        w.vec(&m.sy);
        w.vec(&m.ss);
        w.vec(&m.yy);
        w.vec(&m.sy_dot);
        w.f64(m.theta);
        w.u64(self.journal.len() as u64);
        for j in &self.journal {
            w.vec(&j.x);
            w.f64(j.f);
            w.vec(&j.g);
        }
        w.u64(self.traces.len() as u64);
        for t in &self.traces {
            w.u32(t.eval);
            w.f64(t.f);
            w.f64(t.sigz);
            w.f64(t.grad_norm);
            w.f64(t.time);
        }
        w.vec(&self.x);
        w.vec(&self.h);
        let digest = Sha256::digest(&w.0);
        w.0.extend_from_slice(&digest);
        w.0
    }

    /// Parse; `path` only names the file in errors.
    pub fn from_bytes(b: &[u8], path: &Path) -> Result<Checkpoint> {
        let bad = |m: String| Error::file(path, format!("not a usable stage-2 checkpoint: {m}"));
        if b.len() < MAGIC.len() + 4 + 32 + 32 || &b[..8] != MAGIC {
            return Err(bad("wrong magic or too short".into()));
        }
        let (body, sum) = b.split_at(b.len() - 32);
        if Sha256::digest(body).as_slice() != sum {
            return Err(bad("checksum mismatch (truncated or altered)".into()));
        }
        let mut r = R { b: body, pos: 8 };
        let parse = |r: &mut R| -> std::result::Result<Checkpoint, String> {
            let v = r.u32()?;
            if v != VERSION {
                return Err(format!("format version {v}, this program reads {VERSION}"));
            }
            let fingerprint: [u8; 32] = r.take(32)?.try_into().expect("32 bytes");
            let n_eval = r.u64()?;
            let elapsed = r.f64()?;
            let x = r.vec()?;
            let f = r.f64()?;
            let g = r.vec()?;
            let n_iter = r.u64()? as usize;
            let s_eval = r.u64()? as usize;
            let proj_grad_norm = r.f64()?;
            let memory = MemoryState {
                s: r.vecs()?,
                y: r.vecs()?,
                sy: r.vec()?,
                ss: r.vec()?,
                yy: r.vec()?,
                sy_dot: r.vec()?,
                theta: r.f64()?,
            };
            let state = State { x, f, g, n_iter, n_eval: s_eval, proj_grad_norm, memory };
            let nj = r.len(24)?;
            let mut journal = Vec::with_capacity(nj);
            for _ in 0..nj {
                journal.push(JournalEntry { x: r.vec()?, f: r.f64()?, g: r.vec()? });
            }
            let nt = r.len(36)?;
            let mut traces = Vec::with_capacity(nt);
            for _ in 0..nt {
                traces.push(TracePoint {
                    eval: r.u32()?,
                    f: r.f64()?,
                    sigz: r.f64()?,
                    grad_norm: r.f64()?,
                    time: r.f64()?,
                });
            }
            let xc = r.vec()?;
            let h = r.vec()?;
            if r.pos != r.b.len() {
                return Err(format!("{} unexpected bytes at the end", r.b.len() - r.pos));
            }
            let ck = Checkpoint { fingerprint, n_eval, elapsed, state, journal, traces, x: xc, h };
            ck.check().map(|_| ck)
        };
        parse(&mut r).map_err(bad)
    }

    /// Internal consistency (dimensions, counts).
    fn check(&self) -> std::result::Result<(), String> {
        let n = self.state.x.len();
        if self.state.g.len() != n || self.x.len() != n {
            return Err("vector lengths disagree".into());
        }
        if self.journal.iter().any(|j| j.x.len() != n || j.g.len() != n) {
            return Err("journal vectors have the wrong length".into());
        }
        if self.state.n_eval as u64 + self.journal.len() as u64 != self.n_eval {
            return Err(format!(
                "state at evaluation {} plus {} journalled does not reach {}",
                self.state.n_eval,
                self.journal.len(),
                self.n_eval
            ));
        }
        if !(self.elapsed.is_finite() && self.elapsed >= 0.0) {
            return Err("bad elapsed time".into());
        }
        Ok(())
    }
}

/// The checkpoint folder of a run.
pub fn dir(outdir: &Path) -> PathBuf {
    outdir.join("checkpoints")
}

fn file_name(tag: &str, n_eval: u64) -> String {
    format!("{tag}_eval{n_eval:08}.ckpt")
}

/// Checkpoint files of `tag`, newest first.
pub fn list(outdir: &Path, tag: &str) -> Result<Vec<(u64, PathBuf)>> {
    let d = dir(outdir);
    let rd = match std::fs::read_dir(&d) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(io_err(&d, e)),
    };
    let prefix = format!("{tag}_eval");
    let mut v = Vec::new();
    for e in rd {
        let e = e.map_err(|e| io_err(&d, e))?;
        let name = e.file_name().to_string_lossy().to_string();
        let Some(num) = name.strip_prefix(&prefix).and_then(|r| r.strip_suffix(".ckpt")) else { continue };
        if num.len() == 8 && num.bytes().all(|c| c.is_ascii_digit()) {
            v.push((num.parse::<u64>().expect("digits"), e.path()));
        }
    }
    v.sort_by_key(|e| std::cmp::Reverse(e.0));
    Ok(v)
}

/// Write atomically and remove all but the newest [`KEEP`].
pub fn save(outdir: &Path, tag: &str, ck: &Checkpoint) -> Result<PathBuf> {
    let d = dir(outdir);
    std::fs::create_dir_all(&d).map_err(|e| io_err(&d, e))?;
    let path = d.join(file_name(tag, ck.n_eval));
    let bytes = ck.to_bytes();
    write_replace(&path, |w| {
        use std::io::Write;
        w.write_all(&bytes).map_err(|e| io_err(&path, e))
    })?;
    for (_, old) in list(outdir, tag)?.into_iter().skip(KEEP) {
        let _ = std::fs::remove_file(old);
    }
    Ok(path)
}

/// The newest readable checkpoint of `tag` whose fingerprint matches.
/// Unreadable files are reported in `warnings` and skipped; a readable one of
/// another problem is an error (continuing it would be wrong).
pub fn latest(
    outdir: &Path,
    tag: &str,
    fingerprint: &[u8; 32],
    warnings: &mut Vec<String>,
) -> Result<Option<Checkpoint>> {
    for (_, p) in list(outdir, tag)? {
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) => {
                warnings.push(format!("{}: {e}", p.display()));
                continue;
            }
        };
        match Checkpoint::from_bytes(&bytes, &p) {
            Ok(ck) if &ck.fingerprint == fingerprint => return Ok(Some(ck)),
            Ok(_) => {
                return Err(Error::file(
                    &p,
                    "was written for a different problem (shots, parameters or settings differ); \
                     use another --outdir or --saveTag",
                ))
            }
            Err(e) => warnings.push(e.to_string()),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Checkpoint {
        let n = 5;
        let v = |k: f64| (0..n).map(|i| k + i as f64 * 0.25).collect::<Vec<f64>>();
        Checkpoint {
            fingerprint: [7; 32],
            n_eval: 12,
            elapsed: 3.5,
            state: State {
                x: v(1.0),
                f: -4.0,
                g: v(0.1),
                n_iter: 8,
                n_eval: 10,
                proj_grad_norm: 0.3,
                memory: MemoryState {
                    s: vec![v(0.01), v(0.02)],
                    y: vec![v(0.03), v(0.04)],
                    sy: vec![1.0, 2.0, 3.0, 4.0],
                    ss: vec![5.0, 6.0, 6.0, 7.0],
                    yy: vec![8.0, 9.0, 9.0, 10.0],
                    sy_dot: vec![1.0, 4.0],
                    theta: 2.5,
                },
            },
            journal: vec![
                JournalEntry { x: v(1.1), f: -4.5, g: v(0.2) },
                JournalEntry { x: v(1.2), f: -4.6, g: v(0.3) },
            ],
            traces: vec![TracePoint { eval: 11, f: -4.6, sigz: 1.1, grad_norm: 0.5, time: 3.4 }],
            x: v(1.2),
            h: vec![1.0, 2.0],
        }
    }

    #[test]
    fn roundtrip_and_files() {
        let ck = sample();
        let b = ck.to_bytes();
        assert_eq!(Checkpoint::from_bytes(&b, Path::new("x")).unwrap(), ck);
        let tmp = tempfile::tempdir().unwrap();
        for k in [12u64, 20, 28] {
            let mut c = ck.clone();
            c.n_eval = k;
            c.state.n_eval = k as usize - 2;
            save(tmp.path(), "stage2", &c).unwrap();
        }
        let l = list(tmp.path(), "stage2").unwrap();
        assert_eq!(l.iter().map(|x| x.0).collect::<Vec<_>>(), vec![28, 20]);
        let mut w = Vec::new();
        assert_eq!(latest(tmp.path(), "stage2", &[7; 32], &mut w).unwrap().unwrap().n_eval, 28);
        assert!(latest(tmp.path(), "stage2", &[8; 32], &mut w).is_err());
        // A damaged newest file falls back to the previous one, with a warning.
        std::fs::write(&l[0].1, &b[..b.len() - 3]).unwrap();
        assert_eq!(latest(tmp.path(), "stage2", &[7; 32], &mut w).unwrap().unwrap().n_eval, 20);
        assert_eq!(w.len(), 1);
        assert!(latest(tmp.path(), "other", &[7; 32], &mut w).unwrap().is_none());
    }

    /// Flipped or truncated bytes never panic and are always rejected.
    #[test]
    fn mutations_are_rejected_without_panic() {
        let b = sample().to_bytes();
        let mut rng = 12345u64;
        for i in 0..3000 {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let mut m = b.clone();
            if i % 3 == 0 {
                m.truncate((rng >> 33) as usize % b.len());
            } else {
                let k = (rng >> 33) as usize % b.len();
                m[k] ^= 1 << (rng % 8);
            }
            assert!(Checkpoint::from_bytes(&m, Path::new("m")).is_err(), "mutation {i} accepted");
            // With a valid checksum the parser itself must cope: Ok or Err, no panic.
            if m.len() > 32 {
                let body = m.len() - 32;
                let d = Sha256::digest(&m[..body]);
                m[body..].copy_from_slice(&d);
                let _ = Checkpoint::from_bytes(&m, Path::new("m"));
            }
        }
    }
}
