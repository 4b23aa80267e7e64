//! The stage-1 target's analytic gradient (through the reparameterisation,
//! the kernel derivatives, G, per-ROI scales and the restraints) against
//! central finite differences, for the parameter combinations stage 1 offers.

mod stage1_util;

use diffbragg::stage1::driver::{list_tasks, structure_factors};
use diffbragg::stage1::shot::{prepare_shot, RunContext};

fn check(dir: &std::path::Path, overrides: &[&str]) {
    let mut ov: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    ov.push(stage1_util::outdir_arg(&dir.join("out")));
    let cfg = stage1_util::config(&dir.join("hopper.phil"), &ov);
    let fhkl = structure_factors(&cfg).unwrap();
    let sg = cfg.space_group.as_deref().map(|s| diffbragg::symmetry::SpaceGroup::parse(s).unwrap());
    let task = list_tasks(&cfg).unwrap().remove(0);
    let ctx = RunContext::new(cfg, fhkl, sg, None, dir.join("out"));
    let prep = prepare_shot(&ctx, &task).unwrap_or_else(|f| panic!("{}: {}", f.reason, f.message));
    let p = prep.problem(&ctx.fhkl);
    let n = prep.params.set.n_free();
    assert!(n > 0);
    // A point away from x0 = 1 (every map is evaluated off its starting value).
    let x: Vec<f64> = (0..n).map(|k| 1.0 + 0.02 * ((k as f64 * 0.7).sin())).collect();
    let trusted = prep.data.trusted.clone();
    let mut g = vec![0.0; n];
    let e = p.evaluate(&x, Some(&mut g), &trusted).unwrap();
    let names = prep.params.set.free_names();
    for k in 0..n {
        let h = 1e-5;
        let mut xp = x.clone();
        let mut xm = x.clone();
        xp[k] += h;
        xm[k] -= h;
        let fp = p.evaluate(&xp, None, &trusted).unwrap().f;
        let fm = p.evaluate(&xm, None, &trusted).unwrap().f;
        let fd = (fp - fm) / (2.0 * h);
        // Relative agreement, plus the rounding noise of f in the difference.
        let tol = 2e-4 * fd.abs().max(g[k].abs()) + 1e-9 * e.f.abs().max(1.0);
        assert!(
            (fd - g[k]).abs() <= tol,
            "{overrides:?}: {} analytic {} vs fd {fd} (f = {})",
            names[k],
            g[k],
            e.f
        );
    }
}

#[test]
fn gradients_match_finite_differences() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    stage1_util::small(d, 1, 7, 256, 40.0, 8);
    // The default maps (rot, G and N ranged, cell) plus detz and the spectrum correction.
    check(d, &["types.G=ranged", "fix.detz_shift=False", "fix.spec=False"]);
    // Positive maps, isotropic N, per-ROI scales, restraints on.
    check(
        d,
        &[
            "types.G=positive",
            "types.Nabc=positive",
            "simulator.crystal.has_isotropic_ncells=True",
            "fix.perRoiScale=False",
            "use_restraints=True",
            "betas.RotXYZ=1e-6",
            "centers.ucell_a=79",
            "betas.ucell_a=0.01",
            "centers.Nvol=3000",
            "betas.Nvol=1e4",
        ],
    );
    // Mosaic spread: isotropic, then anisotropic, with off-diagonal N.
    check(
        d,
        &["simulator.crystal.num_mosaicity_samples=4", "init.eta_abc=0.05 0.05 0.05", "fix.eta_abc=False"],
    );
    check(
        d,
        &[
            "simulator.crystal.num_mosaicity_samples=4",
            "init.eta_abc=0.05 0.04 0.03",
            "fix.eta_abc=False",
            "fix.Ndef=False",
            "init.Ndef=0.5 0.2 0.1",
        ],
    );
}
