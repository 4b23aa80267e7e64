//! Stage-1 parameters with diffBragg's phil names and meanings (fwd-model §4.4),
//! and how each refined one enters the model.
//!
//! Order (hopper's): `RotXYZ0..2_xtal0`, `G_xtal0`, then for ii = 0..3
//! `Nabc{ii}`, `Ndef{ii}`, `eta_abc{ii}` (interleaved), `ucell0..`,
//! `detz_shift`, `scale_roi{r}` (only with `fix.perRoiScale=False`),
//! `lambda_offset`, `lambda_scale`. Every parameter starts at x = 1
//! (value = init). The diffuse-scattering parameters are not modelled.
//!
//! Units of the values: rotations rad, cell edges Å and angles **rad**
//! (the lattice system's free parameters, chosen from the **space group**,
//! never from the cell values: fwd-model §3.3 \[TRAP\] avoided), N unit cells,
//! η degrees, detz_shift **mm** (the phil unit; diffBragg works in metres
//! internally), λ0 Å, λ1 and G dimensionless.
//!
//! Decisions:
//! * `types.G/Nabc = ranged` use the bounded sine map of [`crate::refine::params`];
//!   `positive` the exponential map.
//! * Per-ROI scales use the positive map `s = s0·exp(σ(x−1))` (the reference's
//!   ranged [0, 1e12] map starts at its lower turning point, the G trap again);
//!   their reference restraint (centre 1, β = 1e12) is negligible and omitted.
//! * With `has_isotropic_ncells`, `Nabc0` moves Na = Nb = Nc together; with an
//!   isotropic η (three equal `init.eta_abc` or `has_isotropic_mosaicity`),
//!   `eta_abc0` moves all three. The tied entries are fixed parameters whose
//!   value the model ignores.
//! * Restraints (`use_restraints=True`): per-parameter `centers.*`/`betas.*` in
//!   phil units (angles in degrees and deg², detz in mm and mm², see
//!   [`crate::config::diffbragg`]); `centers.RotXYZ` is honoured (default 0).

use crate::config::diffbragg::{DiffBraggParams, ParamKind};
use crate::config::Sources;
use crate::error::{Error, Result};
use crate::kernel::{NcellsParam, Param};
use crate::refine::params::{names, Parameter, ParameterSet};
use crate::refine::restraints::{NvolRestraint, Restraint, DEG_TO_RAD};
use crate::ucell::{LatticeSystem, UcellParams};

/// What a refined coordinate moves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Slot {
    /// A parameter the kernel differentiates.
    Kernel(Param),
    /// The overall scale G (linear in the model).
    G,
    /// The scale of ROI r (linear in the model).
    RoiScale(usize),
}

/// How the mosaic spread is modelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EtaMode {
    /// One domain (η not modelled).
    None,
    Iso,
    Aniso,
}

/// The stage-1 parameters of one shot.
#[derive(Clone, Debug)]
pub struct ShotParams {
    pub set: ParameterSet,
    /// What each free coordinate moves (x order).
    pub slots: Vec<Slot>,
    pub system: LatticeSystem,
    pub iso_ncells: bool,
    pub eta: EtaMode,
    pub n_domains: usize,
    pub per_roi: bool,
    pub n_rois: usize,
    pub nvol: Option<NvolRestraint>,
}

pub use crate::ucell::lattice_system;

/// The free cell parameters of `cell` in `system`. A cell that misses the
/// system's constraints by rounding (DIALS writes symmetrised cells to ~1e-10)
/// is symmetrised by averaging the tied values; a larger mismatch is an error.
pub fn ucell_params(system: LatticeSystem, cell: &crate::crystal::UnitCell) -> Result<UcellParams> {
    if let Ok(u) = UcellParams::from_cell(system, cell) {
        return Ok(u);
    }
    let [a, b, c, al, be, ga] = cell.to_array();
    let r = |x: f64| x.to_radians();
    let v = match system {
        LatticeSystem::Triclinic => vec![a, b, c, r(al), r(be), r(ga)],
        LatticeSystem::Monoclinic => vec![a, b, c, r(be)],
        LatticeSystem::Orthorhombic => vec![a, b, c],
        LatticeSystem::Tetragonal | LatticeSystem::Hexagonal => vec![0.5 * (a + b), c],
        LatticeSystem::Rhombohedral => vec![(a + b + c) / 3.0, r((al + be + ga) / 3.0)],
        LatticeSystem::Cubic => vec![(a + b + c) / 3.0],
    };
    let u = UcellParams::new(system, v)?;
    let back = u.unit_cell().to_array();
    for k in 0..6 {
        let tol = if k < 3 { 1e-3 * cell.to_array()[k].abs() } else { 0.05 };
        if (back[k] - cell.to_array()[k]).abs() > tol {
            return Err(Error::param(
                "space_group",
                format!(
                    "the crystal's cell {:?} does not fit the {system:?} lattice of the space group",
                    cell.to_array()
                ),
            ));
        }
    }
    Ok(u)
}

/// Inputs that vary per shot.
#[derive(Clone, Debug)]
pub struct ShotInit<'a> {
    pub ucell: &'a UcellParams,
    pub n_rois: usize,
    pub roi_scale_init: &'a [f64],
    /// G to start from (init.G, or the least-squares scale).
    pub g_init: f64,
}

fn kind_param(
    name: String,
    kind: ParamKind,
    init: f64,
    min: f64,
    max: f64,
    sigma: f64,
    fixed: bool,
) -> Result<Parameter> {
    if fixed {
        return Parameter::fixed(name, init);
    }
    match kind {
        ParamKind::Ranged => Parameter::ranged(name, init, min, max, sigma),
        ParamKind::Positive => Parameter::positive(name, init, sigma),
    }
}

fn restrained(p: Parameter, on: bool, center: Option<f64>, beta: Option<f64>) -> Result<Parameter> {
    if on && p.is_refined() {
        p.with_restraint(center, beta)
    } else {
        Ok(p)
    }
}

/// Build the parameters of one shot from the configuration.
pub fn build(cfg: &DiffBraggParams, _src: &Sources, init: &ShotInit) -> Result<ShotParams> {
    let on = cfg.use_restraints;
    let mut set = ParameterSet::new();
    let mut slots_by_index: Vec<Option<Slot>> = Vec::new();
    let mut push = |set: &mut ParameterSet, p: Parameter, slot: Slot| -> Result<()> {
        let refined = p.is_refined();
        set.push(p)?;
        slots_by_index.push(refined.then_some(slot));
        Ok(())
    };
    let rot_kernel = [Param::RotX, Param::RotY, Param::RotZ];
    for i in 0..3 {
        let p = kind_param(
            names::rot(i),
            ParamKind::Ranged,
            cfg.init.rot_xyz[i],
            cfg.mins.rot_xyz[i],
            cfg.maxs.rot_xyz[i],
            cfg.sigmas.rot_xyz[i],
            cfg.fix.rot_xyz,
        )?;
        let center = cfg.betas.rot_xyz.map(|_| cfg.centers.rot_xyz.map_or(0.0, |c| c[i]));
        push(&mut set, restrained(p, on, center, cfg.betas.rot_xyz)?, Slot::Kernel(rot_kernel[i]))?;
    }
    if !(init.g_init.is_finite() && init.g_init > 0.0) {
        return Err(Error::param("init.G", format!("starting scale {} must be > 0", init.g_init)));
    }
    let g = kind_param(
        names::G.into(),
        cfg.types.g,
        init.g_init,
        cfg.mins.g,
        cfg.maxs.g,
        cfg.sigmas.g,
        cfg.fix.g,
    )?;
    push(&mut set, restrained(g, on, cfg.centers.g, cfg.betas.g)?, Slot::G)?;

    let iso_ncells = cfg.simulator.crystal.has_isotropic_ncells;
    let nmos = cfg.simulator.crystal.num_mosaicity_samples;
    let eta0 = cfg.init.eta_abc;
    let eta_iso = cfg.simulator.crystal.has_isotropic_mosaicity || (eta0[0] == eta0[1] && eta0[1] == eta0[2]);
    let eta_mode = if nmos > 1 && eta0.iter().any(|&e| e > 0.0) {
        if eta_iso {
            EtaMode::Iso
        } else {
            EtaMode::Aniso
        }
    } else {
        EtaMode::None
    };
    if !cfg.fix.eta_abc && eta_mode == EtaMode::None {
        return Err(Error::param(
            "fix.eta_abc",
            "refining the mosaic spread needs simulator.crystal.num_mosaicity_samples > 1 and init.eta_abc > 0",
        ));
    }
    if eta_mode == EtaMode::Aniso && eta0.iter().any(|&e| !(e > 0.0)) {
        return Err(Error::param("init.eta_abc", "an anisotropic mosaic spread needs all three values > 0"));
    }
    let ncells_kernel = [NcellsParam::Na, NcellsParam::Nb, NcellsParam::Nc];
    let ndef_kernel = [NcellsParam::Nd, NcellsParam::Ne, NcellsParam::Nf];
    for ii in 0..3 {
        let tied = iso_ncells && ii > 0;
        let p = kind_param(
            names::nabc(ii),
            cfg.types.nabc,
            cfg.init.nabc[ii],
            cfg.mins.nabc[ii],
            cfg.maxs.nabc[ii],
            cfg.sigmas.nabc[ii],
            cfg.fix.nabc || tied,
        )?;
        let c = cfg.centers.nabc.map(|c| c[ii]);
        let b = cfg.betas.nabc.map(|b| b[ii]);
        let kp = if iso_ncells { NcellsParam::Iso } else { ncells_kernel[ii] };
        push(&mut set, restrained(p, on, c, b)?, Slot::Kernel(Param::Ncells(kp)))?;

        let p = kind_param(
            names::ndef(ii),
            ParamKind::Ranged,
            cfg.init.ndef[ii],
            cfg.mins.ndef[ii],
            cfg.maxs.ndef[ii],
            cfg.sigmas.ndef[ii],
            cfg.fix.ndef,
        )?;
        let c = cfg.centers.ndef.map(|c| c[ii]);
        let b = cfg.betas.ndef.map(|b| b[ii]);
        push(&mut set, restrained(p, on, c, b)?, Slot::Kernel(Param::Ncells(ndef_kernel[ii])))?;

        let eta_tied = eta_mode != EtaMode::Aniso && ii > 0;
        let mut emin = cfg.mins.eta_abc[ii];
        if eta0[ii] == 0.0 && emin == 0.0 {
            emin = -1e-10; // the reference's tweak so that a zero start is inside the range
        }
        let p = kind_param(
            names::eta_abc(ii),
            ParamKind::Ranged,
            eta0[ii],
            emin,
            cfg.maxs.eta_abc[ii],
            cfg.sigmas.eta_abc[ii],
            cfg.fix.eta_abc || eta_tied || eta_mode == EtaMode::None,
        )?;
        let c = cfg.centers.eta_abc.map(|c| c[ii]);
        let b = cfg.betas.eta_abc.map(|b| b[ii]);
        push(&mut set, restrained(p, on, c, b)?, Slot::Kernel(Param::Eta(ii)))?;
    }

    let sys = init.ucell.system;
    let perc = cfg.ucell_edge_perc / 100.0;
    let ang = cfg.ucell_ang_abs.to_radians();
    for (i, &v) in init.ucell.values.iter().enumerate() {
        let name = names::ucell(i);
        let is_angle = sys.is_angle(i);
        let (lo, hi) = if is_angle { (v - ang, v + ang) } else { (v * (1.0 - perc), v * (1.0 + perc)) };
        let sigma = cfg.sigmas.ucell.get(i).copied().unwrap_or(1.0);
        let p = kind_param(name, ParamKind::Ranged, v, lo, hi, sigma, cfg.fix.ucell)?;
        let pname = sys.param_names()[i];
        let (c, b) = match pname {
            "a" => (cfg.centers.ucell_a, cfg.betas.ucell_a),
            "b" => (cfg.centers.ucell_b, cfg.betas.ucell_b),
            "c" => (cfg.centers.ucell_c, cfg.betas.ucell_c),
            "alpha" => (cfg.centers.ucell_alpha, cfg.betas.ucell_alpha),
            "beta" => (cfg.centers.ucell_beta, cfg.betas.ucell_beta),
            _ => (cfg.centers.ucell_gamma, cfg.betas.ucell_gamma),
        };
        let p = if on && p.is_refined() {
            let k = if is_angle { DEG_TO_RAD } else { 1.0 };
            let r = Restraint::from_user_units(&p.name, c, b, k)?;
            let mut p = p;
            p.restraint = r;
            p
        } else {
            p
        };
        push(&mut set, p, Slot::Kernel(Param::Ucell(i)))?;
    }

    let p = kind_param(
        names::DETZ_SHIFT.into(),
        ParamKind::Ranged,
        cfg.init.detz_shift,
        cfg.mins.detz_shift,
        cfg.maxs.detz_shift,
        cfg.sigmas.detz_shift,
        cfg.fix.detz_shift,
    )?;
    push(
        &mut set,
        restrained(p, on, cfg.centers.detz_shift, cfg.betas.detz_shift)?,
        Slot::Kernel(Param::DetzShift),
    )?;

    let per_roi = !cfg.fix.per_roi_scale;
    if per_roi {
        if init.roi_scale_init.len() != init.n_rois {
            return Err(Error::msg("internal: one starting scale per ROI is needed"));
        }
        for r in 0..init.n_rois {
            let s0 = init.roi_scale_init[r];
            let s0 = if s0.is_finite() && s0 > 0.0 { s0 } else { 1.0 };
            push(
                &mut set,
                Parameter::positive(names::scale_roi(r), s0, cfg.sigmas.roi_per_scale)?,
                Slot::RoiScale(r),
            )?;
        }
    }
    let spec_k = [Param::LambdaOffset, Param::LambdaScale];
    let spec_n = [names::LAMBDA_OFFSET, names::LAMBDA_SCALE];
    for i in 0..2 {
        let p = kind_param(
            spec_n[i].into(),
            ParamKind::Ranged,
            cfg.init.spec[i],
            cfg.mins.spec[i],
            cfg.maxs.spec[i],
            cfg.sigmas.spec[i],
            cfg.fix.spec,
        )?;
        let c = cfg.centers.spec.map(|c| c[i]);
        let b = cfg.betas.spec.map(|b| b[i]);
        push(&mut set, restrained(p, on, c, b)?, Slot::Kernel(spec_k[i]))?;
    }
    let slots: Vec<Slot> = slots_by_index.into_iter().flatten().collect();
    let nvol = if on { NvolRestraint::new(cfg.centers.nvol, cfg.betas.nvol)? } else { None };
    Ok(ShotParams {
        set,
        slots,
        system: sys,
        iso_ncells,
        eta: eta_mode,
        n_domains: nmos,
        per_roi,
        n_rois: init.n_rois,
        nvol,
    })
}

/// Named values of one parameter vector, read back in model terms.
#[derive(Clone, Debug, PartialEq)]
pub struct Values {
    pub rot: [f64; 3],
    pub g: f64,
    /// (Na, Nb, Nc, Nd, Ne, Nf).
    pub ncells: [f64; 6],
    pub eta: [f64; 3],
    pub ucell: Vec<f64>,
    pub detz_shift: f64,
    pub roi_scale: Vec<f64>,
    pub lambda: [f64; 2],
}

impl ShotParams {
    /// Every value at free coordinates `x`.
    pub fn values(&self, x: &[f64]) -> Values {
        let all = self.set.values(x);
        let get = |name: &str| self.set.index(name).map(|i| all[i]).unwrap_or(0.0);
        let mut nabc = [get(&names::nabc(0)), get(&names::nabc(1)), get(&names::nabc(2))];
        if self.iso_ncells {
            nabc = [nabc[0]; 3];
        }
        let mut eta = [get(&names::eta_abc(0)), get(&names::eta_abc(1)), get(&names::eta_abc(2))];
        if self.eta == EtaMode::Iso {
            eta = [eta[0]; 3];
        }
        Values {
            rot: [get(&names::rot(0)), get(&names::rot(1)), get(&names::rot(2))],
            g: get(names::G),
            ncells: [
                nabc[0],
                nabc[1],
                nabc[2],
                get(&names::ndef(0)),
                get(&names::ndef(1)),
                get(&names::ndef(2)),
            ],
            eta,
            ucell: (0..self.system.n_params()).map(|i| get(&names::ucell(i))).collect(),
            detz_shift: get(names::DETZ_SHIFT),
            roi_scale: if self.per_roi {
                (0..self.n_rois).map(|r| get(&names::scale_roi(r))).collect()
            } else {
                vec![1.0; self.n_rois]
            },
            lambda: [get(names::LAMBDA_OFFSET), get(names::LAMBDA_SCALE)],
        }
    }

    /// The kernel parameters among the free coordinates, in x order.
    pub fn kernel_params(&self) -> Vec<Param> {
        self.slots
            .iter()
            .filter_map(|s| match s {
                Slot::Kernel(p) => Some(*p),
                _ => None,
            })
            .collect()
    }
}
